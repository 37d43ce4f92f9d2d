"""``budget prices`` CLI: tables on stdout, one clear line and exit code 2 on bad input."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from services.cli import app

runner = CliRunner()


def test_show_prints_layer_and_rates() -> None:
    result = runner.invoke(app, ["prices", "show", "gpt-4o", "--provider", "OpenAI"])
    assert result.exit_code == 0
    assert "genai-prices 0.2.3" in result.stdout
    assert "2.5" in result.stdout


def test_show_unknown_model_exits_2_with_one_line_on_stderr() -> None:
    result = runner.invoke(app, ["prices", "show", "no-such-model"])
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0
    assert "no-such-model" in result.stderr


def test_show_a_priced_model_under_a_misspelt_provider_names_the_provider() -> None:
    result = runner.invoke(app, ["prices", "show", "gpt-4o", "--provider", "opnai"])
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0
    assert "provider 'opnai' is unknown: did you mean 'openai'? no price" in result.stderr


def test_list_provider_models() -> None:
    result = runner.invoke(app, ["prices", "list", "--provider", "xAI"])
    assert result.exit_code == 0
    assert "grok-3" in result.stdout


def test_list_unknown_provider_exits_2() -> None:
    result = runner.invoke(app, ["prices", "list", "--provider", "nope"])
    assert result.exit_code == 2
    assert "unknown provider" in result.stderr


def test_show_gives_the_configured_override_the_tracker_charges(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "budget:\n"
        "  price_overrides:\n"
        "    - {provider: openai, model: gpt-4o, effective_from: '2026-01-01',\n"
        "       rates: {input_uncached: '1.00', output_text: '2.00'}}\n"
    )
    result = runner.invoke(app, ["--config", str(config), "prices", "show", "gpt-4o"])
    assert result.exit_code == 0, result.stderr
    assert "override 2026-01-01" in result.stdout
