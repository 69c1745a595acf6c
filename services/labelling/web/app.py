"""The labelling web app: FastAPI routes over the label store, server-rendered HTML.

Pages (GET, signed in): ``/label`` (resume: the next class not graded by me), ``/label/{id}``
(one class, large, with its statistics), ``/grid`` and ``/grid/{job}`` (a job's classes at a
glance), ``/agreement``, ``/export``. State changes (POST, CSRF-checked): grade, skip, undo,
export, sign-out — as JSON API calls from the page's script (``/api/...``, header
``X-CSRF-Token``) and as plain forms that work without JavaScript. Every grade is committed
before the response is sent, so nothing is lost on close, reload or crash.

Templates are Jinja2 with autoescaping on everywhere; the Content-Security-Policy allows only
this app's own scripts and styles (no inline script or style), so a dataset or class name can
only ever be shown as text.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select
from starlette.templating import Jinja2Templates

from cryobus.services.labelling import queue
from cryobus.services.labelling.agreement import agreement
from cryobus.services.labelling.store import GRADE_NAMES, GRADES, ExportRow, LabelStore
from cryobus.services.labelling.web.auth import (
    CSRF_FIELD,
    CSRF_HEADER,
    SESSION_COOKIE,
    SIGNIN_COOKIE,
    AuthConfig,
    CsrfFailed,
    NotSignedIn,
    User,
    check_csrf,
    new_signin_nonce,
    normalise_email,
    require_user,
    token_matches,
)
from cryobus.shared.store import ArtifactStore

HERE = Path(__file__).parent
KEY_TO_GRADE = {**{g.lower(): g for g in GRADES}, **{str(i + 1): g for i, g in enumerate(GRADES)}}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
COOKIE_MAX_AGE = 30 * 24 * 3600


class GradeIn(BaseModel):
    """Body of ``POST /api/grade``; any other field (e.g. a labeler) is refused."""

    model_config = ConfigDict(extra="forbid")
    class_id: int
    grade: Literal["A", "B", "C", "D", "F"]


class ClassIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    class_id: int


class Empty(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _templates() -> Jinja2Templates:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _num
    return Jinja2Templates(env=env)


def _num(value: Any, fmt: str = "{:.2f}") -> str:
    return "–" if value is None else fmt.format(value)


def create_app(
    store: LabelStore,
    *,
    auth: AuthConfig,
    artifacts: ArtifactStore | None = None,
    on_change: Callable[[], None] | None = None,
) -> FastAPI:
    """The web app.

    Args:
        store: the label store.
        auth: how labelers sign in (see :mod:`.auth`).
        artifacts: where exports go; ``None`` disables export.
        on_change: called after every committed change (the service wakes its outbox publisher).
    """
    app = FastAPI(title="cryobus labelling", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    templates = _templates()

    def changed() -> None:
        if on_change is not None:
            on_change()

    def page(request: Request, name: str, user: User | None, status: int = 200, **ctx: Any) -> HTMLResponse:
        ctx.update(user=user, csrf=user.csrf if user else "", grades=GRADES, grade_names=GRADE_NAMES)
        return templates.TemplateResponse(request, name, ctx, status_code=status)

    def api_user(request: Request) -> User:
        user = require_user(request, store, auth)
        check_csrf(user, request.headers.get(CSRF_HEADER))
        return user

    async def form_user(request: Request) -> tuple[User, Any]:
        user = require_user(request, store, auth)
        form = await request.form()
        check_csrf(user, form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER))  # type: ignore[arg-type]
        return user, form

    # ------------------------------------------------------------------ plumbing

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["X-Frame-Options"] = "DENY"
        if "cache-control" not in response.headers:
            response.headers["Cache-Control"] = "no-store"
        new_session = getattr(request.state, "set_session", None)
        if new_session:
            _set_session_cookie(response, new_session, auth)
        return response

    @app.exception_handler(NotSignedIn)
    async def not_signed_in(request: Request, _exc: NotSignedIn):
        if request.method == "GET" and not request.url.path.startswith("/api/"):
            return RedirectResponse("/signin", status_code=303)
        return JSONResponse({"error": "not signed in"}, status_code=401)

    @app.exception_handler(CsrfFailed)
    async def csrf_failed(_request: Request, _exc: CsrfFailed):
        return JSONResponse({"error": "missing or wrong CSRF token"}, status_code=403)

    @app.get("/healthz")
    def healthz() -> Response:
        return Response("ok\n", media_type="text/plain")

    @app.get("/favicon.ico")
    def favicon() -> Response:
        return Response(status_code=204)

    # ------------------------------------------------------------------ signing in

    @app.get("/")
    def root(request: Request):
        require_user(request, store, auth)  # not signed in: redirected to /signin
        return RedirectResponse("/label", status_code=303)

    def signin_page(request: Request, error: str | None = None, email: str = "", status: int = 200) -> HTMLResponse:
        nonce = new_signin_nonce()
        resp = page(request, "signin.html", None, status=status, error=error, email=email, nonce=nonce,
                    token_signin=bool(auth.access_token), proxy_header=auth.trusted_header)
        resp.set_cookie(SIGNIN_COOKIE, nonce, max_age=3600, httponly=True, samesite="lax", secure=auth.cookie_secure)
        return resp

    @app.get("/signin")
    def signin_form(request: Request):
        try:
            require_user(request, store, auth)
            return RedirectResponse("/label", status_code=303)
        except NotSignedIn:
            return signin_page(request)

    @app.post("/signin")
    async def signin(request: Request):
        form = await request.form()
        nonce = request.cookies.get(SIGNIN_COOKIE)
        given_nonce = str(form.get(CSRF_FIELD) or "")
        email_raw = str(form.get("email") or "")
        if not nonce or not given_nonce or nonce != given_nonce:
            return signin_page(request, "The sign-in form expired; please try again.", email_raw, status=403)
        email = normalise_email(email_raw)
        if email is None:
            return signin_page(request, "That is not an e-mail address.", email_raw, status=400)
        if not token_matches(auth, str(form.get("token") or "")):
            return signin_page(request, "Wrong access token.", email_raw, status=403)
        token, _csrf = store.create_session(store.labeler_id(email))
        resp = RedirectResponse("/label", status_code=303)
        _set_session_cookie(resp, token, auth)
        resp.delete_cookie(SIGNIN_COOKIE)
        return resp

    @app.post("/signout")
    async def signout(request: Request):
        await form_user(request)
        token = request.cookies.get(SESSION_COOKIE)
        if token:
            store.end_session(token)
        resp = RedirectResponse("/signin", status_code=303)
        resp.delete_cookie(SESSION_COOKIE)
        return resp

    # ------------------------------------------------------------------ labelling

    def next_url(user: User, after: int | None) -> str:
        found = queue.next_ungraded(store, user.labeler_id, after)
        return f"/label/{found}" if found is not None else "/label"

    @app.get("/label")
    def resume(request: Request):
        user = require_user(request, store, auth)
        found = queue.next_ungraded(store, user.labeler_id)
        if found is None:
            graded, total = queue.progress(store, user.labeler_id)
            return page(request, "done.html", user, graded=graded, total=total)
        return RedirectResponse(f"/label/{found}", status_code=303)

    @app.get("/label/{class_id}")
    def label_page(request: Request, class_id: int):
        user = require_user(request, store, auth)
        view = queue.class_view(store, class_id, user.labeler_id)
        if view is None:
            raise HTTPException(404, "no such class")
        graded, total = queue.progress(store, user.labeler_id)
        return page(
            request, "label.html", user, c=view, graded=graded, total=total,
            prev_id=queue.neighbour(store, class_id, -1), next_id=queue.neighbour(store, class_id, 1),
        )

    @app.get("/class/{class_id}/image.png")
    def class_png(request: Request, class_id: int):
        require_user(request, store, auth)
        png = store.display_png(class_id)
        if png is None:
            raise HTTPException(404, "no such class")
        # The image of a class id never changes.
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=86400, immutable"})

    def _grade(user: User, class_id: int, grade: str) -> dict[str, Any]:
        try:
            result = store.record_grade(user.labeler_id, class_id, grade)
        except LookupError:
            raise HTTPException(404, "no such class") from None
        if result.changed:
            changed()
        graded, total = queue.progress(store, user.labeler_id)
        return {
            "saved": True, "class_id": class_id, "grade": result.grade, "previous": result.previous,
            "revision": result.revision, "next_url": next_url(user, class_id), "graded": graded, "total": total,
        }  # fmt: skip

    @app.post("/api/grade")
    def api_grade(request: Request, body: GradeIn):
        return _grade(api_user(request), body.class_id, body.grade)

    @app.post("/label/{class_id}/grade")
    async def form_grade(request: Request, class_id: int):
        user, form = await form_user(request)
        grade = KEY_TO_GRADE.get(str(form.get("grade") or "").lower())
        if grade is None:
            raise HTTPException(422, "grade must be A, B, C, D or F")
        out = _grade(user, class_id, grade)
        return RedirectResponse(out["next_url"], status_code=303)

    def _skip(user: User, class_id: int) -> str:
        store.set_position(user.labeler_id, class_id)
        return next_url(user, class_id)

    @app.post("/api/skip")
    def api_skip(request: Request, body: ClassIn):
        return {"next_url": _skip(api_user(request), body.class_id)}

    @app.post("/label/{class_id}/skip")
    async def form_skip(request: Request, class_id: int):
        user, _ = await form_user(request)
        return RedirectResponse(_skip(user, class_id), status_code=303)

    def _undo(user: User) -> dict[str, Any]:
        result = store.undo(user.labeler_id)
        if result is None:
            return {"undone": False}
        changed()
        return {"undone": True, "class_id": result.class_id, "grade": result.grade, "url": f"/label/{result.class_id}"}

    @app.post("/api/undo")
    def api_undo(request: Request, body: Empty | None = None):
        return _undo(api_user(request))

    @app.post("/undo")
    async def form_undo(request: Request):
        user, _ = await form_user(request)
        out = _undo(user)
        return RedirectResponse(out.get("url", "/label"), status_code=303)

    @app.get("/api/next")
    def api_next(request: Request, after: int | None = None):
        user = require_user(request, store, auth)
        found = queue.next_ungraded(store, user.labeler_id, after)
        return {"class_id": found, "url": f"/label/{found}" if found is not None else None}

    @app.get("/api/progress")
    def api_progress(request: Request):
        user = require_user(request, store, auth)
        graded, total = queue.progress(store, user.labeler_id)
        return {"graded": graded, "total": total}

    # ------------------------------------------------------------------ grid

    @app.get("/grid")
    def grid_index(request: Request):
        user = require_user(request, store, auth)
        return page(request, "grid_index.html", user, jobs=queue.job_summaries(store, user.labeler_id))

    @app.get("/grid/{job_id}")
    def grid(request: Request, job_id: int):
        user = require_user(request, store, auth)
        classes = queue.job_views(store, job_id, user.labeler_id)
        if not classes:
            raise HTTPException(404, "no such job")
        graded, total = queue.progress(store, user.labeler_id)
        return page(request, "grid.html", user, classes=classes, job=classes[0], graded=graded, total=total)

    # ------------------------------------------------------------------ agreement & export

    @app.get("/agreement")
    def agreement_page(request: Request, limit: int = 500):
        user = require_user(request, store, auth)
        report = agreement(store.grade_rows())
        return page(request, "agreement.html", user, report=report, shown=report.classes[: max(limit, 1)])

    @app.get("/export")
    def export_page(request: Request):
        user = require_user(request, store, auth)
        return page(request, "export.html", user, exports=_exports(store), enabled=artifacts is not None)

    @app.post("/export")
    async def export_run(request: Request):
        user, form = await form_user(request)
        if artifacts is None:
            raise HTTPException(409, "no artifact store configured")
        from cryobus.services.labelling.export import NothingToExport, export_training_set

        include_partial = str(form.get("include_partial") or "") in ("1", "on", "true")
        try:
            result = export_training_set(store, artifacts, include_partial=include_partial, requested_by=user.email)
        except NothingToExport as exc:
            return page(request, "export.html", user, status=409, exports=_exports(store), enabled=True, error=str(exc))
        changed()
        return page(request, "export.html", user, exports=_exports(store), enabled=True, result=result)

    return app


def _exports(store: LabelStore) -> list[ExportRow]:
    with store.read() as s:
        return list(s.scalars(select(ExportRow).order_by(ExportRow.id.desc()).limit(20)))


def _set_session_cookie(response: Response, token: str, auth: AuthConfig) -> None:
    response.set_cookie(
        SESSION_COOKIE, token, max_age=COOKIE_MAX_AGE, httponly=True, samesite="lax", secure=auth.cookie_secure, path="/"
    )
