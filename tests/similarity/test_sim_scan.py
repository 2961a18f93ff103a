from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image
from skimage import data

from provguard.errors import InputError
from provguard.similarity.pictures import decode_image, hamming, pdq_hash
from provguard.similarity.scan import SCAN_SCHEMA, scan_profiles


def _photo(name: str) -> np.ndarray:
    """A bundled scikit-image test photo (no network)."""
    return np.asarray(getattr(data, name)())


def _jpeg(image: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture(scope="module")
def hashes() -> dict[str, bytes]:
    astro = _photo("astronaut")
    return {
        "wx/astro.jpg": pdq_hash(astro)[0],
        "dy/astro-copy.jpg": pdq_hash(astro)[0],  # same picture re-uploaded
        "dy/astro-recompressed.jpg": pdq_hash(decode_image(_jpeg(astro, 30)))[0],
        "wx/cat.jpg": pdq_hash(_photo("chelsea"))[0],
        "dy/coffee.jpg": pdq_hash(_photo("coffee"))[0],
    }


def _profiles() -> pa.Table:
    return pa.table(
        {
            "app_id": ["douyin", "douyin", "douyin", "douyin", "duoshan", "douyin", "douyin"],
            "subject_id": [1, 2, 3, 4, 1, 5, 6],
            "handle": ["张伟", "ＬＩ Ｎａ", "coffee fan", None, "张伟", "\u200b", "王芳"],
            "avatar_key": [
                "dy/coffee.jpg",
                None,
                "dy/astro-copy.jpg",
                "dy/astro-recompressed.jpg",
                "dy/unhashed.jpg",
                None,
                "dy/coffee.jpg",
            ],
            "bio": ["x"] * 7,  # extra column: ignored
        }
    )


def _provider() -> pa.Table:
    return pa.table(
        {
            "provider": ["wechat", "qq", "wechat", "wechat", "wechat", "wechat"],
            "subject_id": [1, 1, 2, 3, 4, 5],
            "nickname": ["张伟", "zhang wei", "Li\u200d  na", "Bean", "Astro", "\u200d"],
            "avatar_key": [
                "wx/cat.jpg",
                None,
                None,
                "wx/astro.jpg",
                "wx/astro.jpg",
                None,
            ],
        }
    )


V1_COLUMNS = (
    "app_id",
    "subject_id",
    "provider",
    "handle_exact",
    "handle_normalized",
    "picture_equal",
    "picture_distance",
    "any_match",
)


def test_scan_known_output(hashes: dict[str, bytes]) -> None:
    out = scan_profiles(_profiles(), _provider(), hashes)
    assert out.schema == SCAN_SCHEMA
    d_coffee_cat = hamming(hashes["dy/coffee.jpg"], hashes["wx/cat.jpg"])
    d_recompressed = hamming(hashes["dy/astro-recompressed.jpg"], hashes["wx/astro.jpg"])
    assert d_coffee_cat > 31 and 0 < d_recompressed <= 16
    expected = [
        # app, subject, provider, exact, normalized, pic_equal, pic_distance, any
        ("douyin", 1, "qq", False, False, False, None, False),
        ("douyin", 1, "wechat", True, False, False, d_coffee_cat, True),
        ("douyin", 2, "wechat", False, True, False, None, True),
        ("douyin", 3, "wechat", False, False, True, 0, True),
        ("douyin", 4, "wechat", False, False, False, d_recompressed, False),
        ("douyin", 5, "wechat", False, False, False, None, False),  # blank handles
        # subject 6 has no provider copy: no row
        ("duoshan", 1, "qq", False, False, False, None, False),
        ("duoshan", 1, "wechat", True, False, False, None, True),  # avatar not hashed
    ]
    rows = list(zip(*[out.column(i).to_pylist() for i in range(len(V1_COLUMNS))], strict=True))
    assert rows == expected
    assert out.schema.names[: len(V1_COLUMNS)] == list(V1_COLUMNS)


def test_hash_table_input_equals_mapping(hashes: dict[str, bytes]) -> None:
    table = pa.table(
        {
            "avatar_key": [*hashes.keys(), "dy/null.jpg"],
            "pdq": pa.array([*hashes.values(), None], type=pa.binary(32)),
        }
    )
    a = scan_profiles(_profiles(), _provider(), hashes)
    b = scan_profiles(_profiles(), _provider(), table)
    assert a.equals(b)


def test_empty_inputs() -> None:
    empty = _profiles().slice(0, 0)
    assert scan_profiles(empty, _provider(), {}).num_rows == 0
    assert scan_profiles(_profiles(), _provider().slice(0, 0), {}).num_rows == 0
    nobody = _provider().filter(pa.compute.greater(_provider().column("subject_id"), 100))
    out = scan_profiles(_profiles(), nobody, {})
    assert out.num_rows == 0 and out.schema == SCAN_SCHEMA


def test_bad_inputs(hashes: dict[str, bytes]) -> None:
    with pytest.raises(InputError, match="handle"):
        scan_profiles(_profiles().drop_columns(["handle"]), _provider(), hashes)
    dup = pa.concat_tables([_provider(), _provider().slice(0, 1)])
    with pytest.raises(InputError, match="duplicate"):
        scan_profiles(_profiles(), dup, hashes)
    with pytest.raises(InputError, match="32 bytes"):
        scan_profiles(_profiles(), _provider(), {"wx/cat.jpg": b"abc"})
    bad_ids = _profiles().set_column(1, "subject_id", pa.array(["a"] * 7))
    with pytest.raises(InputError, match="subject_id"):
        scan_profiles(bad_ids, _provider(), hashes)


def test_scan_five_thousand_profiles_vectorised(hashes: dict[str, bytes]) -> None:
    n = 5000
    rng = np.random.default_rng(7)
    keys = list(hashes)
    subjects = np.arange(n, dtype=np.int64)
    nick = [f"user {i}" for i in range(n)]
    copy = rng.random(n) < 0.3
    handle = [f"ＵＳＥＲ {i}" if c else f"other{i}" for i, c in enumerate(copy)]
    app_av = rng.choice(keys, n).tolist()
    prov_av = rng.choice(keys, n).tolist()
    profiles = pa.table(
        {"app_id": ["douyin"] * n, "subject_id": subjects, "handle": handle, "avatar_key": app_av}
    )
    provider = pa.table(
        {
            "provider": ["wechat"] * n,
            "subject_id": subjects,
            "nickname": nick,
            "avatar_key": prov_av,
        }
    )
    out = scan_profiles(profiles, provider, hashes)
    assert out.num_rows == n
    assert out.column("handle_normalized").to_pylist() == copy.tolist()
    expected_dist = [hamming(hashes[a], hashes[b]) for a, b in zip(app_av, prov_av, strict=True)]
    assert out.column("picture_distance").to_pylist() == expected_dist
