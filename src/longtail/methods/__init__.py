"""Method-specific stage kinds (one module per method); importing this package registers them.

Each module registers its stage kinds in ``longtail.engine.stages.STAGE_KINDS``; the recipes
(``src/longtail/recipes/*.yaml``) compose them with the shared stage kinds.
"""
import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
