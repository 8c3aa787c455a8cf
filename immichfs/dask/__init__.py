"""Processing a whole library on a Dask cluster through ``immich://`` (``immichfs[dask]``).

:mod:`.job` plans, partitions and runs; :mod:`.images` is the per-image work.
``examples/depth_with_dask.py`` is the command line over them.
"""
