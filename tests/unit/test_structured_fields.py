"""Report notes reach a header as RFC 9651 strings, whatever their text."""

from __future__ import annotations

from services.api.structured_fields import string_list


def test_printable_ascii_is_a_string_with_quotes_and_backslashes_escaped() -> None:
    assert string_list(["a", 'say "hi" \\ bye']) == '"a", "say \\"hi\\" \\\\ bye"'


def test_other_text_is_a_display_string_as_the_rfc_writes_it() -> None:
    # RFC 9651, section 3.3.8's example
    shown = string_list(["This is intended for display to üüsers."])
    assert shown == '%"This is intended for display to %c3%bc%c3%bcsers."'
    # a line break is no printable ASCII: then % and " are encoded too
    assert string_list(['50% "off"\n']) == '%"50%25 %22off%22%0a"'
