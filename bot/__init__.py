"""newsbot: posts every new item of news feeds into Matrix rooms, exactly once."""

__version__ = "0.1.0"
HOMEPAGE = "https://interhop.org"
USER_AGENT = f"newsbot/{__version__} (+{HOMEPAGE})"
