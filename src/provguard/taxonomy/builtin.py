"""The built-in vocabularies.

Data categories: fideslang (https://ethyca.github.io/fideslang/) keys where fideslang has them
(``user``, ``user.name``, ``user.unique_id``, ``user.contact``); the social-login specific ones
(``user.name.nickname``, ``user.avatar``, ``user.unique_id.openid``/``unionid``,
``user.social.friend_list``, ``grant.login``) are provguard extensions.
"""

from __future__ import annotations

from provguard.taxonomy.keys import Taxonomy

DATA_CATEGORIES = Taxonomy.from_entries(
    "data category",
    [
        ("user", "data about a data subject (fideslang)"),
        ("user.name", "names of the data subject (fideslang)"),
        ("user.name.nickname", "handle / display name chosen on a platform"),
        ("user.name.legal", "the subject's real (legal) name"),
        ("user.avatar", "profile picture"),
        ("user.unique_id", "identifiers (fideslang)"),
        ("user.unique_id.openid", "provider subject id, one per client app"),
        ("user.unique_id.unionid", "provider subject id, one per developer account"),
        ("user.contact", "contact data (fideslang)"),
        ("user.contact.phone_number", "phone number (fideslang)"),
        ("user.social", "social-graph data"),
        ("user.social.friend_list", "friend / follow lists"),
        ("user.social.interaction", "messages, likes, visits between subjects"),
        ("grant", "authorisations a subject gave through an open platform"),
        ("grant.login", "an OAuth login authorisation (grant) and what it unlocks"),
        ("grant.token", "access / refresh tokens issued under a grant"),
    ],
)

PURPOSES = Taxonomy.from_entries(
    "purpose",
    [
        ("account", "running the subject's account"),
        ("account.login", "signing the subject in"),
        ("profile", "the subject's profile"),
        ("profile.display", "showing the profile to the subject or to others"),
        ("social", "social features"),
        ("social.friend_recommendation", "recommending people to follow / befriend"),
        ("social.messaging", "messages between subjects"),
        ("analytics", "measurement and reporting"),
        ("marketing", "marketing"),
        ("marketing.advertising", "advertising"),
        ("compliance", "meeting legal obligations"),
        ("compliance.remediation", "remediation campaigns ordered or agreed"),
    ],
)

ACTIONS = Taxonomy.from_entries(
    "action",
    [
        ("use", "process the value for a purpose"),
        ("transfer", "provide the value or grant onward to another app or controller"),
        ("derive", "compute a new value (feature, embedding, score) from it"),
        ("store", "keep it"),
        ("display", "show it to a person"),
    ],
)
