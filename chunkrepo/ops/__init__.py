"""Use cases, one module (or package) each: backup, traverse, listing, tarout,
restore, check.  They use the repository layer and never print or exit."""
