"""Reduction profiles: ordered stages a user picks by name (built-ins, the user's file, --profiles-file), the strict
schema of a profile file, and the stage list."""
