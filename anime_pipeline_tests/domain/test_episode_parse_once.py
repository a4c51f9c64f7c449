"""episode.yaml is parsed once per process for the same bytes (every stage of a render loads
the episode): counted with a spy on the YAML loader. A changed file is parsed again, a
refused one is never remembered, and no caller sees what another one changed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from anime_pipeline.domain import episode as episode_module
from anime_pipeline.domain.episode import EpisodeValidationError, load_episode
from anime_pipeline_tests.conftest import minimal_episode


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The texts handed to the hardened YAML loader from now on (the cache starts empty)."""
    seen: list[str] = []
    real: Callable[..., Any] = episode_module.load_yaml

    def spy(text: str, **kwargs: Any) -> Any:
        seen.append(text)
        return real(text, **kwargs)

    monkeypatch.setattr(episode_module, "load_yaml", spy)
    monkeypatch.setattr(episode_module, "_PARSED", type(episode_module._PARSED)())
    yield seen


def test_loading_the_same_episode_again_parses_nothing(tmp_path: Path,
                                                       parses: list[str]) -> None:
    folder = minimal_episode(tmp_path / "ep")
    first = load_episode(folder)
    assert len(parses) == 1  # episode.yaml (the folder has no creative_control.yaml)
    for _ in range(5):
        again = load_episode(folder)
        assert again.episode == first.episode
    assert len(parses) == 1


def test_a_changed_file_is_parsed_again_even_at_the_same_size(tmp_path: Path,
                                                              parses: list[str]) -> None:
    folder = minimal_episode(tmp_path / "ep")
    assert load_episode(folder).episode.title == "テスト"
    path = folder / "episode.yaml"
    text = path.read_text("utf-8")
    path.write_text(text.replace("テスト", "テスツ"), "utf-8")  # same length in UTF-8
    assert path.stat().st_size == len(text.encode("utf-8"))
    assert load_episode(folder).episode.title == "テスツ"
    assert len(parses) == 2


def test_what_the_file_names_is_checked_on_every_load(tmp_path: Path,
                                                      parses: list[str]) -> None:
    """Only the parse is remembered: a keyframe removed since is still refused."""
    folder = minimal_episode(tmp_path / "ep")
    load_episode(folder)
    (folder / "keyframes" / "S02.png").unlink()
    with pytest.raises(EpisodeValidationError, match="S02.png"):
        load_episode(folder)
    assert len(parses) == 1


def test_a_refused_document_is_never_remembered(tmp_path: Path, parses: list[str]) -> None:
    folder = minimal_episode(tmp_path / "ep")
    (folder / "episode.yaml").write_text("a: &x 1\nb: *x\n", "utf-8")
    for _ in range(2):
        with pytest.raises(EpisodeValidationError, match="anchors"):
            load_episode(folder)
    assert len(parses) == 2


def test_each_caller_gets_its_own_copy(tmp_path: Path, parses: list[str]) -> None:
    folder = minimal_episode(tmp_path / "ep")
    raw = (folder / "episode.yaml").read_bytes()
    text = raw.decode("utf-8")
    first = episode_module._parse_yaml(raw, text, 1000)
    first["shots"].clear()
    first["title"] = "changed"
    second = episode_module._parse_yaml(raw, text, 1000)
    assert second == yaml.safe_load(text)
    assert len(parses) == 1
