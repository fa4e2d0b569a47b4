"""acetrack configuration: one ``Settings`` object, built at the edge."""

from config.settings import Settings, parse_redis_url

__all__ = ["Settings", "parse_redis_url"]
