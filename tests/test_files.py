"""salad_lite.files: atomic writes leave no litter; JSON reads name the file they fail on."""

from __future__ import annotations

import pytest

from salad_lite.files import (
    TEMP_SUFFIX,
    CorruptFileError,
    atomic_write,
    read_json,
    remove_stale_temps,
    write_json_atomic,
    write_text_atomic,
)


def test_atomic_write_replaces_and_leaves_only_the_target(tmp_path):
    target = tmp_path / "sub" / "a.json"
    write_json_atomic(target, {"x": 1})
    write_json_atomic(target, {"x": 2})
    assert read_json(target) == {"x": 2}
    assert [p.name for p in target.parent.iterdir()] == ["a.json"]


def test_failed_write_keeps_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "a.txt"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(target, "w") as handle:
            handle.write("half of the new")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_unserialisable_json_writes_nothing(tmp_path):
    with pytest.raises(TypeError):
        write_json_atomic(tmp_path / "a.json", {"x": object()})
    assert list(tmp_path.iterdir()) == []


def test_bad_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        with atomic_write(tmp_path / "a", "a"):
            pass


@pytest.mark.parametrize("content, reason", [(b"", "empty"), (b"{\"a\": ", "not valid JSON"),
                                             (b"\xff\xfe\x00", "not UTF-8")])
def test_corrupt_json_names_the_file(tmp_path, content, reason):
    path = tmp_path / "last.json"
    path.write_bytes(content)
    with pytest.raises(CorruptFileError, match=reason) as info:
        read_json(path, "checkpoint metadata")
    assert str(path) in str(info.value) and "checkpoint metadata" in str(info.value)


def test_missing_json_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="result.json"):
        read_json(tmp_path / "result.json")


def test_remove_stale_temps_clears_only_temps(tmp_path):
    write_text_atomic(tmp_path / "keep.txt", "x")
    stale = tmp_path / ".keep.txt.abc123.partial"
    stale.write_text("left by a killed writer")
    assert remove_stale_temps(tmp_path) == [stale]
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
    assert remove_stale_temps(tmp_path / "absent") == []


def test_a_folder_in_place_of_a_json_file_is_named(tmp_path):
    with pytest.raises(CorruptFileError, match=rf"run description {tmp_path} is a folder, not a JSON file"):
        read_json(tmp_path, "run description")


def test_a_write_that_cannot_start_names_the_target_not_its_temporary_file(tmp_path):
    (tmp_path / "file").write_text("")
    target = tmp_path / "file" / "scores.csv"  # its folder is a file
    with pytest.raises(OSError, match=rf"cannot write {target}") as caught:
        write_text_atomic(target, "x")
    assert TEMP_SUFFIX not in str(caught.value)
