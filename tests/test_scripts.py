"""The README's own commands, run as a new user runs them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_serve_reads_a_relative_config_from_where_it_is_run(tmp_path: Path) -> None:
    # A config whose key variable is unset: serve reads it, says so and stops (status 2).
    (tmp_path / "gateway.toml").write_text(
        '[providers.fake]\nkind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'
        'api_key_env = "LLMSESSION_TEST_UNSET_KEY"\n',
        encoding="utf-8",
    )
    env = {name: value for name, value in os.environ.items() if not name.startswith("LLMSESSION_")}
    env["XDG_DATA_HOME"] = str(tmp_path / "data")
    result = subprocess.run(
        [ROOT / "scripts" / "serve", "--config", "gateway.toml"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "LLMSESSION_TEST_UNSET_KEY" in result.stderr
    assert "cannot read" not in result.stderr
