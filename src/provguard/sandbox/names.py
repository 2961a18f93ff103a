"""Generated legal names of sandbox data subjects (Chinese and Latin script).

Chinese names are a common surname plus one or two given-name characters (simplified script);
Latin names are ``First Last``. The lists are small, so names repeat across subjects, as real
names do.
"""

from __future__ import annotations

from typing import Final

import numpy as np

__all__ = ["CHINESE_GIVEN", "CHINESE_SURNAMES", "LATIN_FIRST", "LATIN_LAST", "real_names"]

CHINESE_SURNAMES: Final = (
    "王", "李", "张", "刘", "陈", "杨", "黄", "赵", "吴", "周", "徐", "孙", "马", "朱", "胡",
    "郭", "何", "高", "林", "罗", "郑", "梁", "谢", "宋", "唐", "许", "韩", "冯", "邓", "曹",
)  # fmt: skip
CHINESE_GIVEN: Final = (
    "伟", "芳", "娜", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "娟", "涛",
    "明", "超", "秀", "霞", "平", "刚", "桂", "英", "华", "玉", "兰", "飞", "鹏", "辉", "晓",
    "红", "雪", "梦", "婷", "宇", "浩", "欣", "怡", "晨", "阳", "龙", "凤", "丹", "蕾", "颖",
)  # fmt: skip
LATIN_FIRST: Final = (
    "Emma", "Olivia", "Ava", "Sophia", "Mia", "Lucas", "Liam", "Noah", "Ethan", "James",
    "Anna", "Laura", "Marie", "David", "Daniel", "Sarah", "Kevin", "Jessica", "Michael", "Grace",
    "Tom", "Lena", "Paul", "Julia", "Oscar", "Chloe", "Leo", "Nina", "Adam", "Eva",
)  # fmt: skip
LATIN_LAST: Final = (
    "Smith", "Johnson", "Brown", "Wilson", "Taylor", "Martin", "Lee", "Walker", "Hall", "Young",
    "King", "Wright", "Lopez", "Hill", "Green", "Baker", "Nelson", "Carter", "Mitchell", "Perez",
    "Roberts", "Turner", "Phillips", "Evans", "Collins", "Stewart", "Morris", "Murphy", "Cook",
    "Bailey",
)  # fmt: skip


def real_names(rng: np.random.Generator, chinese: np.ndarray) -> list[str]:
    """One legal name per subject.

    Args:
        rng: the random source (consumed deterministically).
        chinese: bool array of shape ``(n,)``; True → a Chinese name, False → a Latin name.

    Returns:
        ``n`` names. Chinese given names have two characters with probability 0.6, else one.
    """
    n = int(chinese.shape[0])
    sur = rng.integers(0, len(CHINESE_SURNAMES), n)
    g1 = rng.integers(0, len(CHINESE_GIVEN), n)
    g2 = rng.integers(0, len(CHINESE_GIVEN), n)
    two = rng.random(n) < 0.6
    first = rng.integers(0, len(LATIN_FIRST), n)
    last = rng.integers(0, len(LATIN_LAST), n)
    out: list[str] = []
    for i in range(n):
        if chinese[i]:
            given = CHINESE_GIVEN[g1[i]] + (CHINESE_GIVEN[g2[i]] if two[i] else "")
            out.append(CHINESE_SURNAMES[sur[i]] + given)
        else:
            out.append(f"{LATIN_FIRST[first[i]]} {LATIN_LAST[last[i]]}")
    return out
