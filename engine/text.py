"""Text the engine takes from callers must be encodable: tokenizers and stop matching work on UTF-8."""


def check_unicode(text: str, what: str) -> None:
    """Raise a ValueError naming `what` when `text` holds a lone surrogate (as a JSON string with a bare
    \\ud800 escape does), which UTF-8 cannot encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{what} is not valid Unicode: it holds a lone surrogate {text[e.start]!r} at "
                         f"character {e.start}") from None
