"""Settings shared by every test module."""

from hypothesis import settings

# The properties are about values, not speed; a shared, loaded machine must not
# turn a slow example into a failure.
settings.register_profile("gapless", deadline=None)
settings.load_profile("gapless")
