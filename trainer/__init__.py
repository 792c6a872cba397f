"""bertbc trainer package."""
