"""The product's YAML: alert rules, segments and message templates, parsed and validated with
FILE:LINE errors, and the renderer providers format messages with. Nothing here is process-global:
each process loads a :class:`CatalogFile` from its settings and passes it down."""

from goalhorn.catalog.file import Catalog, CatalogFile, default_catalog, load_catalog, parse_catalog
from goalhorn.catalog.located import CatalogInvalid

__all__ = ["Catalog", "CatalogFile", "CatalogInvalid", "default_catalog", "load_catalog", "parse_catalog"]
