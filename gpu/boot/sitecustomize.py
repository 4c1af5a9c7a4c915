"""Make the GPU kit's --target folder behave like a site-packages folder (gpu/device.sh puts this
folder first on PYTHONPATH and names the kit folder in GPU_KIT_SITE).

1. site.addsitedir(): a PYTHONPATH folder's .pth files are not run otherwise, and the kit needs
   them (_numba_cuda_redirector.pth makes numba.cuda numba-cuda; _rapids_dask_dependency.pth
   patches dask). The folder stays where PYTHONPATH put it: before the image's site-packages,
   so the kit's numpy/numba/pandas shadow the image's.
2. site.getsitepackages() lists the kit folder first: cuda-pathfinder looks for NVIDIA libraries
   (nvidia/cu13/lib: the kit's nvJitLink 13.5, nvcomp) only in the folders that function returns.
3. Any other sitecustomize further along sys.path (the image's) still runs.
"""

import importlib.util
import os
import site
import sys

_KIT = [d for d in os.environ.get("GPU_KIT_SITE", "").split(os.pathsep) if d and os.path.isdir(d)]

for _d in _KIT:
    site.addsitedir(_d)

if _KIT:
    _orig_getsitepackages = site.getsitepackages

    def getsitepackages(prefixes=None):
        rest = [p for p in _orig_getsitepackages(prefixes) if p not in _KIT]
        return [*_KIT, *rest]

    site.getsitepackages = getsitepackages

_here = os.path.dirname(os.path.abspath(__file__))
for _p in sys.path:
    _f = os.path.join(_p or ".", "sitecustomize.py")
    if os.path.abspath(_p or ".") != _here and os.path.isfile(_f):
        _spec = importlib.util.spec_from_file_location("_image_sitecustomize", _f)
        if _spec and _spec.loader:
            _spec.loader.exec_module(importlib.util.module_from_spec(_spec))
        break
