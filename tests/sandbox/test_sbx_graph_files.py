"""Reading SNAP edge lists: formats, cleaning, and located errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from provguard.adapters.graph_files import EdgeList, read_edge_list, undirected_simple_edges
from provguard.errors import GraphFormatError, InputError


def _write(tmp_path: Path, text: str | bytes, name: str = "g.txt") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_ego_facebook_real(ego_facebook: EdgeList) -> None:
    assert ego_facebook.fmt == "pairs"
    assert ego_facebook.num_nodes == 4039
    assert ego_facebook.num_edges == 88234
    assert ego_facebook.time is None
    assert ego_facebook.src.dtype == np.int64 and ego_facebook.dst.dtype == np.int64
    assert (ego_facebook.dropped_self_loops, ego_facebook.dropped_duplicates) == (0, 0)
    a, b = undirected_simple_edges(ego_facebook)
    assert a.shape == (88234,) and bool(np.all(a < b))


def test_college_msg_real(college_msg: EdgeList) -> None:
    assert college_msg.fmt == "timestamped"
    assert college_msg.num_nodes == 1899
    # 59,835 lines of which 37 repeat an earlier (src, dst, time) triple
    assert college_msg.dropped_duplicates == 37
    assert college_msg.num_edges == 59835 - 37
    assert college_msg.time is not None and college_msg.time.dtype == np.int64
    assert int(college_msg.time.min()) == 1082040961  # 2004-04-15
    assert int(college_msg.time.max()) == 1098777142  # 2004-10-26
    assert (int(college_msg.src[0]), int(college_msg.dst[0])) == (1, 2)
    a, b = undirected_simple_edges(college_msg)
    assert a.shape == (13838,)
    pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    assert len(pairs) == a.shape[0] and all(x < y for x, y in pairs)


def test_self_loops_and_duplicates_dropped_and_counted(tmp_path: Path) -> None:
    path = _write(tmp_path, "1 2\n2 2\n1 2\n2 1\n\n   \n3 3\n3 4\n")
    edges = read_edge_list(path)
    assert edges.dropped_self_loops == 2
    assert edges.dropped_duplicates == 1
    assert list(zip(edges.src.tolist(), edges.dst.tolist(), strict=True)) == [
        (1, 2),
        (2, 1),
        (3, 4),
    ]
    assert edges.nodes.tolist() == [1, 2, 3, 4]
    a, b = undirected_simple_edges(edges)
    assert (a.tolist(), b.tolist()) == ([1, 3], [2, 4])


def test_timestamped_duplicates_need_same_time(tmp_path: Path) -> None:
    path = _write(tmp_path, "src dst time\n1 2 10\n1 2 10\n1 2 11\n")
    edges = read_edge_list(path)
    assert edges.dropped_duplicates == 1
    assert edges.time is not None and edges.time.tolist() == [10, 11]


def test_tabs_comments_crlf(tmp_path: Path) -> None:
    path = _write(tmp_path, "# a SNAP comment\r\n1\t2\r\n  3   4  \r\n")
    edges = read_edge_list(path, fmt="pairs")
    assert edges.src.tolist() == [1, 3] and edges.dst.tolist() == [2, 4]


@pytest.mark.parametrize(
    ("text", "fmt", "line", "column", "fragment"),
    [
        ("1 2\n3 x4\n", "auto", 2, 3, "not an integer"),
        ("1 2\n3 -4\n", "auto", 2, 3, "negative"),
        ("1 2\n  7 8 9\n", "pairs", 2, 7, "3 column(s), expected 2"),
        ("1 2\n5\n", "auto", 2, 2, "1 column(s), expected 2"),
        ("src dst time\n1 2 3\n4 5\n", "auto", 3, 4, "expected 3"),
        ("src dst time\n1 2 3\n4 5 1.5\n", "auto", 3, 5, "not an integer"),
        ("1 2\n3 99999999999999999999\n", "auto", 2, 3, "64-bit"),
        ("1 2\n+3 4\n", "auto", 2, 1, "sign"),
        ("", "auto", 1, 1, "no edges"),
        ("\n   \n\n", "auto", 1, 1, "no edges"),
        ("src dst\n\n", "auto", 2, 1, "no edges"),
        ("1 2 3 4\n", "auto", 1, 7, "expected 3"),
        ("src dst time\n1 2 3\n", "pairs", 1, 9, "header has 3 column(s), expected 2"),
    ],
)
def test_malformed_files_located(
    tmp_path: Path, text: str, fmt: str, line: int, column: int, fragment: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(GraphFormatError) as info:
        read_edge_list(path, fmt=fmt)  # type: ignore[arg-type]
    err = info.value
    assert err.location is not None
    assert (err.location.path, err.location.line, err.location.column) == (str(path), line, column)
    assert fragment in err.message
    assert err.code == "PG130"
    assert f"{path}:{line}:{column}" in str(err)


def test_not_utf8_located(tmp_path: Path) -> None:
    path = _write(tmp_path, b"1 2\n3 \xff4\n")
    with pytest.raises(GraphFormatError) as info:
        read_edge_list(path)
    assert info.value.location is not None
    assert (info.value.location.line, info.value.location.column) == (2, 3)


def test_missing_file_is_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        read_edge_list(tmp_path / "nope.txt")
