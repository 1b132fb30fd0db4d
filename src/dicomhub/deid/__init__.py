"""De-identification: PS3.15 Annex E profiles and keyed, deterministic replacement of UIDs and identifiers.

This package is the engine: pure functions over pydicom data sets, no I/O
beyond reading the shipped standard table. The offline CLI and the server
build on exactly the names exported here.
"""

from dicomhub.deid.burned_in import BurnedInRisk, burned_in_risk
from dicomhub.deid.engine import AppliedAction, DeidResult, Replacement, deidentify, is_well_known_uid
from dicomhub.deid.key import SECRET_ENV, ProjectKey, load_secret
from dicomhub.deid.options import Options, Profile
from dicomhub.deid.recipe import Recipe, RecipeRule

__all__ = [
    "SECRET_ENV",
    "AppliedAction",
    "BurnedInRisk",
    "DeidResult",
    "Options",
    "Profile",
    "ProjectKey",
    "Recipe",
    "RecipeRule",
    "Replacement",
    "burned_in_risk",
    "deidentify",
    "is_well_known_uid",
    "load_secret",
]
