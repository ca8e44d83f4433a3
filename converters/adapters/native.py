"""``--adapter native``: convcheck's own converters, one adapter per registered ``model_type``
(``converters.base.Converter`` implements the adapter protocol; native is its foreign format)."""
from __future__ import annotations


def adapters() -> list:
    import converters

    return [converters.get(name) for name in converters.names()]
