"""De-identification: PS3.15 Annex E profiles and keyed, deterministic replacement of UIDs and identifiers."""
