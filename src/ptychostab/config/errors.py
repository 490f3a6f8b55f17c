"""The one error a config that cannot run raises."""


class ConfigError(ValueError):
    """A composed config that cannot run; the message lists every problem found."""
