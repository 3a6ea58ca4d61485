"""Accounts and login sessions: register, verify, log in, refresh, log out, reset passwords.

Answers never reveal whether an e-mail address has an account: registration and the mail
requests answer the same either way, and a failed login costs the same time either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import structlog
from redis.asyncio import Redis
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from cloudcontainer.auth import emails
from cloudcontainer.auth.mail import Mailer, compose
from cloudcontainer.auth.passwords import PasswordHasher
from cloudcontainer.auth.revocations import Revocations
from cloudcontainer.auth.throttle import RedisWindow, SlidingWindow, Window
from cloudcontainer.auth.tokens import AccessTokenSigner, digest, new_secret
from cloudcontainer.config import Settings
from cloudcontainer.db import ApiKey, AuthSession, Database, EmailToken, RefreshToken, User
from cloudcontainer.db.types import new_id, utcnow
from cloudcontainer.errors import BadRequest, Conflict, Forbidden, TooManyRequests, Unauthorized
from cloudcontainer.tasks import TaskSet

__all__ = ["AccountService", "TokenPair"]

log = structlog.get_logger(__name__)

VERIFY = "verify"
RESET = "reset"
RESET_TTL = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    user_id: str = ""  # whose session it is (for the audit log), not sent to the client
    session_id: str = ""


class AccountService:
    def __init__(
        self,
        *,
        settings: Settings,
        database: Database,
        hasher: PasswordHasher,
        signer: AccessTokenSigner,
        mailer: Mailer,
        tasks: TaskSet,
        revocations: Revocations,
        redis: Redis | None = None,
    ) -> None:
        self._settings = settings
        self._revocations = revocations
        self._db = database
        self._hasher = hasher
        self._signer = signer
        self._mailer = mailer
        self._tasks = tasks
        window = settings.login_window_seconds
        self._ip_attempts: Window
        self._account_failures: Window
        if redis is None:
            self._ip_attempts = SlidingWindow(settings.login_max_attempts_per_ip, window)
            self._account_failures = SlidingWindow(settings.login_max_failures_per_account, window)
        else:  # shared by every gateway of the deployment
            self._ip_attempts = RedisWindow(redis, "ip", settings.login_max_attempts_per_ip, window)
            self._account_failures = RedisWindow(
                redis, "account", settings.login_max_failures_per_account, window
            )

    # -- registration and mail ------------------------------------------------------------

    async def register(self, email: str, password: str) -> None:
        """Create an unverified account and mail a link; an existing address gets a notice."""
        if not self._settings.allow_registration:
            raise Forbidden("Registration is closed on this server.", code="registration_closed")
        verified_at = None if self._settings.require_email_verification else utcnow()
        user = User(
            id=new_id("usr"), email=email, password_hash=await self._hasher.hash(password),
            email_verified_at=verified_at,
        )  # fmt: skip
        if not await self._insert_user(user):
            self._mail(email, emails.ALREADY_REGISTERED)
            return
        log.info("user registered", user_id=user.id)
        if verified_at is None:
            async with self._db.session() as session:
                token = await self._new_email_token(session, user.id, VERIFY)
            self._mail(email, emails.VERIFY_EMAIL, token=token, ttl=self._verify_ttl)

    async def create_user(
        self, email: str, password: str, *, admin: bool = False, verified: bool = True
    ) -> User:
        """Make an account directly (operators and scripts); 409 if the address is taken."""
        user = User(
            id=new_id("usr"), email=email, password_hash=await self._hasher.hash(password),
            is_admin=admin, email_verified_at=utcnow() if verified else None,
        )  # fmt: skip
        if not await self._insert_user(user):
            raise Conflict("An account with this e-mail exists.", code="email_taken")
        return user

    async def _insert_user(self, user: User) -> bool:
        """Insert `user` alone in its transaction; False when its e-mail is already taken."""
        try:
            async with self._db.session() as session:
                session.add(user)
        except IntegrityError:
            return False
        return True

    async def resend_verification(self, email: str) -> None:
        async with self._db.session() as session:
            user = await session.scalar(select(User).where(User.email == email))
            if user is None or user.email_verified_at is not None:
                return
            token = await self._new_email_token(session, user.id, VERIFY)
        self._mail(email, emails.VERIFY_EMAIL, token=token, ttl=self._verify_ttl)

    async def verify_email(self, token: str) -> None:
        async with self._db.session() as session:
            row = await self._use_email_token(session, token, VERIFY)
            user = await session.get_one(User, row.user_id)
            if user.email_verified_at is None:
                user.email_verified_at = utcnow()
        log.info("email verified", user_id=row.user_id)

    async def request_password_reset(self, email: str) -> None:
        async with self._db.session() as session:
            user = await session.scalar(select(User).where(User.email == email))
            if user is None:
                return
            token = await self._new_email_token(session, user.id, RESET, ttl=RESET_TTL)
        self._mail(email, emails.PASSWORD_RESET, token=token, ttl=RESET_TTL)

    async def confirm_password_reset(self, token: str, new_password: str) -> str:
        """Set the password; end every session, API key and other reset link of the account
        (a reset may follow a compromise). Answers the account's id."""
        password_hash = await self._hasher.hash(new_password)
        async with self._db.session() as session:
            row = await self._use_email_token(session, token, RESET)
            user = await session.get_one(User, row.user_id)
            user.password_hash = password_hash
            if user.email_verified_at is None:
                user.email_verified_at = utcnow()  # the mailbox owner proved control
            now = utcnow()
            await session.execute(
                update(AuthSession)
                .where(AuthSession.user_id == user.id, AuthSession.revoked_at.is_(None))
                .values(revoked_at=now, revoked_reason="password_reset")
            )
            # An attacker who had the account may have left keys or other reset links behind.
            await session.execute(
                update(ApiKey)
                .where(ApiKey.user_id == user.id, ApiKey.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            await session.execute(
                update(EmailToken)
                .where(
                    EmailToken.user_id == user.id,
                    EmailToken.purpose == RESET,
                    EmailToken.used_at.is_(None),
                )
                .values(used_at=now)
            )
        await self._revocations.end(user_id=row.user_id, reason="password reset")
        log.info("password reset", user_id=row.user_id)
        return row.user_id

    @property
    def _verify_ttl(self) -> timedelta:
        return timedelta(seconds=self._settings.email_token_ttl_seconds)

    async def _new_email_token(
        self, session: AsyncSession, user_id: str, purpose: str, ttl: timedelta | None = None
    ) -> str:
        token = new_secret()
        session.add(
            EmailToken(
                id=new_id("etk"), user_id=user_id, purpose=purpose, token_hash=digest(token),
                expires_at=utcnow() + (ttl or self._verify_ttl),
            )
        )  # fmt: skip
        return token

    async def _use_email_token(self, session: AsyncSession, token: str, purpose: str) -> EmailToken:
        now = utcnow()
        claimed = await session.execute(
            update(EmailToken)
            .where(
                EmailToken.token_hash == digest(token),
                EmailToken.purpose == purpose,
                EmailToken.used_at.is_(None),
                EmailToken.expires_at > now,
            )
            .values(used_at=now)
            .returning(EmailToken.id)
        )
        token_id = claimed.scalar_one_or_none()
        if token_id is None:
            raise BadRequest("The token is invalid, used or expired.", code="invalid_token")
        return await session.get_one(EmailToken, token_id)

    def _mail(
        self, to: str, template: tuple[str, str], *, token: str = "", ttl: timedelta = RESET_TTL
    ) -> None:
        subject, body = template
        text = body.format(
            base_url=self._settings.public_url, token=token, hours=int(ttl.total_seconds() // 3600)
        )
        message = compose(sender=self._settings.mail_from, to=to, subject=subject, body=text)
        self._tasks.spawn(self._mailer.send(message), name=f"mail:{subject}")

    async def check_password(self, user: User, password: str) -> None:
        """Before a destructive request (deleting the account): 403 `wrong_password` unless
        `password` is the account's. Failures count against the account's login throttle, so
        a stolen access token cannot be used to guess the password."""
        retry_after = await self._account_failures.retry_after(user.email)
        if retry_after is not None:
            raise TooManyRequests(
                "Too many wrong passwords; try again later.",
                retry_after=retry_after, code="login_throttled",
            )  # fmt: skip
        async with self._db.session() as session:
            stored = await session.scalar(select(User.password_hash).where(User.id == user.id))
        if not await self._hasher.verify(password, stored):
            await self._account_failures.hit(user.email)
            raise Forbidden("The password is not correct.", code="wrong_password")
        await self._account_failures.reset(user.email)

    # -- login sessions -------------------------------------------------------------------

    async def login(self, email: str, password: str, *, ip: str, user_agent: str) -> TokenPair:
        for window, key in ((self._ip_attempts, ip), (self._account_failures, email)):
            retry_after = await window.retry_after(key)
            if retry_after is not None:
                raise TooManyRequests(
                    "Too many login attempts; try again later.",
                    retry_after=retry_after, code="login_throttled",
                )  # fmt: skip
        await self._ip_attempts.hit(ip)
        async with self._db.session() as session:
            user = await session.scalar(select(User).where(User.email == email))
        if not await self._hasher.verify(password, user.password_hash if user else None):
            await self._account_failures.hit(email)
            raise Unauthorized("Invalid e-mail or password.", code="invalid_credentials")
        assert user is not None
        await self._account_failures.reset(email)
        if self._settings.require_email_verification and user.email_verified_at is None:
            raise Forbidden("Verify your e-mail address first.", code="email_not_verified")
        return await self._start_session(user.id, ip=ip, user_agent=user_agent)

    async def _start_session(self, user_id: str, *, ip: str, user_agent: str) -> TokenPair:
        session_id = new_id("ses")
        async with self._db.session() as session:
            session.add(
                AuthSession(id=session_id, user_id=user_id, ip=ip[:64], user_agent=user_agent[:256])
            )
            await session.flush()
            refresh = self._add_refresh_token(session, session_id)
        return self._pair(user_id, session_id, refresh)

    def _add_refresh_token(self, session: AsyncSession, session_id: str) -> str:
        token = new_secret()
        ttl = timedelta(seconds=self._settings.refresh_token_ttl_seconds)
        session.add(
            RefreshToken(
                id=new_id("rtk"), session_id=session_id, token_hash=digest(token),
                expires_at=utcnow() + ttl,
            )
        )  # fmt: skip
        return token

    def _pair(self, user_id: str, session_id: str, refresh: str) -> TokenPair:
        return TokenPair(
            access_token=self._signer.issue(user_id, session_id),
            refresh_token=refresh,
            expires_in=self._signer.ttl_seconds,
            user_id=user_id,
            session_id=session_id,
        )

    async def refresh(self, token: str) -> TokenPair:
        """Rotate a refresh token; presenting a used one revokes its whole family."""
        now = utcnow()
        reused_session: str | None = None
        async with self._db.session() as session:
            row = (
                await session.execute(
                    select(RefreshToken, AuthSession)
                    .join(AuthSession, RefreshToken.session_id == AuthSession.id)
                    .where(RefreshToken.token_hash == digest(token))
                )
            ).first()
            if row is None:
                raise Unauthorized("The refresh token is not valid.", code="invalid_refresh_token")
            old, auth_session = row
            if auth_session.revoked_at is not None:
                raise Unauthorized("This session has ended.", code="session_revoked")
            if old.expires_at <= now:
                raise Unauthorized("The refresh token has expired.", code="refresh_token_expired")
            claimed = await session.execute(
                update(RefreshToken)
                .where(RefreshToken.id == old.id, RefreshToken.used_at.is_(None))
                .values(used_at=now)
                .returning(RefreshToken.id)
            )
            if claimed.scalar_one_or_none() is None:
                reused_session = auth_session.id
            else:
                fresh = self._add_refresh_token(session, auth_session.id)
                pair = self._pair(auth_session.user_id, auth_session.id, fresh)
        if reused_session is not None:
            await self.revoke_session(reused_session, reason="refresh_token_reused")
            log.warning("refresh token reused; session revoked", session_id=reused_session)
            raise Unauthorized(
                "This refresh token was already used; the session has been ended.",
                code="refresh_token_reused",
            )
        return pair

    async def session_of_refresh_token(self, token: str) -> str | None:
        async with self._db.session() as session:
            return await session.scalar(
                select(RefreshToken.session_id).where(RefreshToken.token_hash == digest(token))
            )

    async def revoke_session(self, session_id: str, *, reason: str) -> None:
        async with self._db.session() as session:
            await session.execute(
                update(AuthSession)
                .where(AuthSession.id == session_id, AuthSession.revoked_at.is_(None))
                .values(revoked_at=utcnow(), revoked_reason=reason)
            )
        await self._revocations.end(session_id=session_id, reason=f"session ended: {reason}")
