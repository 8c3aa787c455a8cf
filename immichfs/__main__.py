from immichfs.cli import main

raise SystemExit(main())
