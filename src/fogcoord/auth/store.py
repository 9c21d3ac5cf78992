"""Persisted principals and API keys (SQLite or PostgreSQL through SQLAlchemy Core)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from fogcoord.auth import keys
from fogcoord.auth.models import (
    DEFAULT_SCOPES,
    ApiKeyInfo,
    Identity,
    IssuedKey,
    Principal,
    PrincipalKind,
    Scope,
)
from fogcoord.clock import Clock
from fogcoord.contracts.errors import NotFound, Unauthenticated, ValidationFailed

metadata = sa.MetaData()

principals = sa.Table(
    "principals",
    metadata,
    sa.Column("principal_id", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("key_id", sa.String(16), primary_key=True),
    sa.Column(
        "principal_id", sa.String(64), sa.ForeignKey("principals.principal_id"), nullable=False
    ),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("scopes", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float, nullable=True),
)

CACHE_TTL_S = 5.0
"""How long a verified key is trusted from memory. Bounds how late another process's
revocation is seen; revocations made in this process take effect at once."""


def _scopes(text: str) -> tuple[Scope, ...]:
    return tuple(Scope(s) for s in text.split(",") if s)


class KeyStore:
    def __init__(self, engine: Engine, clock: Clock) -> None:
        self._engine = engine
        self._clock = clock
        self._cache: dict[str, tuple[str, Identity, float]] = {}
        metadata.create_all(engine)

    # --- principals ----------------------------------------------------------------------------

    def create_principal(self, kind: PrincipalKind, name: str) -> Principal:
        name = name.strip()
        if not name or len(name) > 200:
            raise ValidationFailed("name", "must be 1 to 200 characters")
        principal = Principal(
            principal_id=f"{kind.value[:3]}_{uuid.uuid4().hex[:16]}",
            kind=kind,
            name=name,
            created_at=self._clock.time(),
        )
        with self._engine.begin() as conn:
            conn.execute(principals.insert().values(**principal.model_dump(mode="json")))
        return principal

    def principal(self, principal_id: str) -> Principal:
        with self._engine.connect() as conn:
            row = conn.execute(
                principals.select().where(principals.c.principal_id == principal_id)
            ).first()
        if row is None:
            raise NotFound("principal", principal_id)
        return Principal.model_validate(row._asdict())

    def has_operator(self) -> bool:
        with self._engine.connect() as conn:
            row = conn.execute(
                sa.select(sa.func.count())
                .select_from(principals)
                .where(principals.c.kind == PrincipalKind.OPERATOR.value)
            ).scalar_one()
        return bool(row)

    # --- keys ----------------------------------------------------------------------------------

    def issue_key(
        self,
        principal_id: str,
        scopes: Iterable[Scope] | None = None,
        *,
        key: str | None = None,
    ) -> IssuedKey:
        """A new key for the principal; ``scopes`` must be within its kind's defaults."""
        principal = self.principal(principal_id)
        allowed = DEFAULT_SCOPES[principal.kind]
        wanted = frozenset(scopes) if scopes is not None else allowed
        if not wanted:
            raise ValidationFailed("scopes", "at least one scope is needed")
        beyond = sorted(s.value for s in wanted - allowed)
        if beyond:
            raise ValidationFailed(
                "scopes", f"not allowed for a {principal.kind.value}: {', '.join(beyond)}"
            )
        if key is None:
            key_id, key = keys.generate()
        else:
            found = keys.key_id_of(key)
            if found is None:
                raise ValidationFailed("key", "must look like fc_<16 hex>_<43 url-safe chars>")
            key_id = found
        info = ApiKeyInfo(
            key_id=key_id,
            principal_id=principal_id,
            scopes=tuple(sorted(wanted)),
            created_at=self._clock.time(),
        )
        with self._engine.begin() as conn:
            conn.execute(
                api_keys.insert().values(
                    key_id=key_id,
                    principal_id=principal_id,
                    digest=keys.digest(key),
                    scopes=",".join(s.value for s in info.scopes),
                    created_at=info.created_at,
                )
            )
        return IssuedKey(key=key, info=info, principal=principal)

    def list_keys(self, principal_id: str | None = None) -> list[ApiKeyInfo]:
        query = api_keys.select().order_by(api_keys.c.created_at)
        if principal_id is not None:
            query = query.where(api_keys.c.principal_id == principal_id)
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return [self._info(r._asdict()) for r in rows]

    def revoke(self, key_id: str) -> ApiKeyInfo:
        now = self._clock.time()
        with self._engine.begin() as conn:
            row = conn.execute(api_keys.select().where(api_keys.c.key_id == key_id)).first()
            if row is None:
                raise NotFound("api key", key_id)
            if row.revoked_at is None:
                conn.execute(
                    api_keys.update().where(api_keys.c.key_id == key_id).values(revoked_at=now)
                )
            data = row._asdict()
            data["revoked_at"] = data["revoked_at"] or now
        self._cache.pop(key_id, None)
        return self._info(data)

    def authenticate(self, key: str) -> Identity:
        """The identity behind ``key``; :class:`Unauthenticated` for unknown, wrong or revoked."""
        key_id = keys.key_id_of(key)
        if key_id is None:
            raise Unauthenticated("malformed API key")
        now = self._clock.monotonic()
        cached = self._cache.get(key_id)
        if cached is not None and now - cached[2] < CACHE_TTL_S:
            if keys.matches(key, cached[0]):
                return cached[1]
            raise Unauthenticated("invalid API key")
        with self._engine.connect() as conn:
            row = conn.execute(
                sa.select(
                    api_keys.c.digest,
                    api_keys.c.revoked_at,
                    api_keys.c.scopes,
                    principals.c.principal_id,
                    principals.c.kind,
                    principals.c.name,
                    principals.c.created_at,
                )
                .join(principals, principals.c.principal_id == api_keys.c.principal_id)
                .where(api_keys.c.key_id == key_id)
            ).first()
        if row is None or row.revoked_at is not None or not keys.matches(key, row.digest):
            self._cache.pop(key_id, None)
            raise Unauthenticated("invalid or revoked API key")
        identity = Identity(
            principal=Principal(
                principal_id=row.principal_id,
                kind=PrincipalKind(row.kind),
                name=row.name,
                created_at=row.created_at,
            ),
            key_id=key_id,
            scopes=frozenset(_scopes(row.scopes)),
        )
        self._cache[key_id] = (row.digest, identity, now)
        return identity

    @staticmethod
    def _info(data: dict[str, object]) -> ApiKeyInfo:
        return ApiKeyInfo(
            key_id=str(data["key_id"]),
            principal_id=str(data["principal_id"]),
            scopes=_scopes(str(data["scopes"])),
            created_at=float(str(data["created_at"])),
            revoked_at=None if data["revoked_at"] is None else float(str(data["revoked_at"])),
        )
