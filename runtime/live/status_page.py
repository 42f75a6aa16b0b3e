"""A status page for the technician beside the X-ray machine: what arrived, what came back, whether the live mode
is healthy, in a browser and without a terminal.

A small Starlette application over a live mode's output folder (``watch`` or ``dicom-listen``). It only reads:
``results/*.json`` (one record per input), ``status.json`` (the mode's heartbeat, `health`), ``outbox/*/status.json``
(forwarding), ``quarantine/*.reason.txt`` (refused datasets) and ``cam/*.png`` (heatmaps). It never writes there
and never takes a lock; once a second it looks at the time stamp of ``results/`` and lists the folder only when
that changed, so it costs the live mode little beyond reading each new result once.

What it shows: the latest results (time, input, label, confidence, status, warnings, latency, heatmap thumbnail),
failures with their reasons, images per hour over the last 24 hours, and the live mode's health (running or not,
last arrival, queue, outbox backlog and last forwarding error). Pages update themselves through server-sent events
(``/events``). Inputs are named by file name or SOP Instance UID; patient names and IDs are never shown, even
when the live mode was asked to keep them in its records.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import os
import time
from collections import deque
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import Any

from ..monitoring.live import read_history
from ..outputs.health import STALE_S, STATUS_FILE
from ..outputs.outbox import outbox_status
from .page_guard import Guard, check_exposure

log = logging.getLogger(__name__)

__all__ = ["ResultIndex", "snapshot", "create_app", "serve", "LATEST", "FAILURES"]

LATEST = 50
"""Results shown in the table."""

FAILURES = 20
DRIFT_DAYS = 3
"""Days of drift statistics the page draws."""
DRIFT_POINTS = 240
"""Points per drift signal on the page: enough for a line over three days, little to send each update."""
"""Failures (and quarantined datasets) shown with their reasons."""

STAMP_SETTLE_NS = 2_000_000_000
"""A folder time stamp younger than this may hide a second change within the same tick: list it anyway."""

EVENT_POLL_S = 1.0
"""How often the page's event stream looks for news: every update costs the browser a redraw, which on a
2-core workstation competes with the live mode (benchmarks/live/status-page.md)."""


class ResultIndex:
    """The result records of an output folder, read once each: a listing per refresh, and only new or changed
    files parsed (a service's folder holds months of results)."""

    def __init__(self, out_dir: Path) -> None:
        self.out = Path(out_dir)
        self._records: dict[str, tuple[int, dict[str, Any], datetime | None]] = {}
        self._folder_stamp: int | None = None
        self._newest_first: list[tuple[dict[str, Any], datetime | None]] = []

    def refresh(self) -> list[tuple[dict[str, Any], datetime | None]]:
        """Every readable record with its finishing time (None if unreadable), newest first.

        Results are only ever added or removed, never rewritten in place (`write_atomic`), so an unchanged
        modification time of the folder means nothing changed: the folder is listed again only when it changed,
        or when its time stamp is too recent to tell two changes apart.
        """
        folder = self.out / "results"
        try:
            stamp: int | None = folder.stat().st_mtime_ns
        except OSError:
            stamp = None
        settled = stamp is not None and time.time_ns() - stamp > STAMP_SETTLE_NS
        if stamp == self._folder_stamp and settled:
            return self._newest_first
        seen: dict[str, int] = {}
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.name.endswith(".json") and not entry.name.startswith("."):
                        try:
                            seen[entry.name] = entry.stat().st_mtime_ns
                        except OSError:
                            continue
        except OSError:
            seen = {}
        for name in list(self._records):
            if name not in seen:
                del self._records[name]
        for name, mtime in seen.items():
            known = self._records.get(name)
            if known is None or known[0] != mtime:
                try:
                    record = json.loads((folder / name).read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    continue
                if isinstance(record, dict):
                    self._records[name] = (mtime, record, _finished(record))
        self._newest_first = sorted(((r, f) for _, r, f in self._records.values()),
                                    key=lambda entry: str(entry[0].get("finished", "")), reverse=True)
        self._folder_stamp = stamp if settled else None
        return self._newest_first


def _finished(record: dict[str, Any]) -> datetime | None:
    try:
        return datetime.fromisoformat(str(record.get("finished")))
    except ValueError:
        return None


def _shown_name(record: dict[str, Any]) -> str:
    """The input as the page names it: a SOP Instance UID, or a file name (never a patient identifier)."""
    if record.get("sop_instance_uid"):
        return str(record["sop_instance_uid"])
    return Path(str(record.get("path", "?"))).name


def _row(record: dict[str, Any]) -> dict[str, Any]:
    """The fields the page shows, picked one by one: whatever else a record holds (patient) stays out."""
    probabilities = record.get("probabilities") or {}
    top = max(probabilities, key=probabilities.get) if probabilities else None
    latency = record.get("arrival_to_result_ms") or (record.get("latency_ms") or {}).get("total")
    status = record.get("status") or ("failed" if record.get("error") else "classified")
    cam = record.get("cam")
    confidence = record.get("finding_probability") or \
        (probabilities.get(top) if top else None)
    label, finding = record.get("label"), record.get("finding") or record.get("label")
    if record.get("positive") is not None:  # a multi-label model: every positive finding, or none
        label = finding = " + ".join(record["positive"]) or "no finding"
        confidence = probabilities.get(record["positive"][0]) if record["positive"] else confidence
    return {"finished": record.get("finished"), "name": _shown_name(record), "label": label,
            "finding": finding, "top": top,
            "confidence": None if status in ("rejected", "failed") else confidence, "status": status,
            "warnings": [str(w) for w in record.get("warnings") or []], "error": record.get("error"),
            "latency_ms": latency, "cam": f"cam/{Path(cam).name}" if cam else None,
            "thumb": f"thumb/{Path(cam).name}" if cam else None}


def _quarantined(out: Path) -> list[dict[str, Any]]:
    found = []
    for path in sorted((out / "quarantine").glob("*.reason.txt"), reverse=True)[:FAILURES]:
        try:
            reason = path.read_text(encoding="utf-8", errors="replace").strip()
            when = datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat(timespec="milliseconds")
        except OSError:
            continue
        found.append({"finished": when, "name": path.name.removesuffix(".reason.txt"), "status": "quarantined",
                      "error": reason})
    return found


def health(out: Path, now: datetime | None = None) -> dict[str, Any]:
    """The live mode's ``status.json``, with whether it is running now (a heartbeat newer than `STALE_S`)."""
    now = now or datetime.now(UTC)
    try:
        status = json.loads((out / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"running": False, "state": "no live mode has written here yet"}
    try:
        age = (now - datetime.fromisoformat(status["updated"])).total_seconds()
    except (KeyError, ValueError, TypeError):
        age = float("inf")
    running = status.get("state") == "running" and age <= STALE_S
    keep = ("mode", "state", "started", "updated", "last_arrival", "last_result", "queue", "outbox_backlog",
            "watching", "listening", "model", "blocked", "quarantined", "drift")
    shown = {k: status.get(k) for k in keep if k in status}
    if status.get("state") == "running" and not running:
        shown["state"] = f"not responding (last heartbeat {age:.0f} s ago)"
    return shown | {"running": running, "heartbeat_age_s": round(age, 1) if age != float("inf") else None}


def snapshot(out: Path, index: ResultIndex, now: datetime | None = None) -> dict[str, Any]:
    """Everything the page shows, as one JSON-ready dict."""
    now = now or datetime.now(UTC)
    entries = index.refresh()
    records = [record for record, _ in entries]
    hours: deque[int] = deque([0] * 24, maxlen=24)
    counts = {"classified": 0, "uncertain": 0, "rejected": 0, "failed": 0}
    since = now - timedelta(hours=24)
    for record, finished in entries:
        status = record.get("status") or ("failed" if record.get("error") else "classified")
        counts[status] = counts.get(status, 0) + 1
        if finished is not None and finished > since:
            hours[23 - min(23, int((now - finished).total_seconds() // 3600))] += 1
    failures = [_row(r) for r in islice((r for r in records if r.get("error")), FAILURES)]
    failures = sorted(failures + _quarantined(out), key=lambda r: str(r["finished"]), reverse=True)[:FAILURES]
    return {"now": now.isoformat(timespec="seconds"), "folder": str(out), "health": health(out, now),
            "outbox": [{k: s.get(k) for k in ("destination", "backlog", "sent", "refused", "last_sent",
                                              "last_error", "last_error_at", "next_attempt")}
                       for s in outbox_status(out)],
            "counts": counts, "total": len(records), "per_hour": list(hours),
            "last_hour": hours[-1], "latest": [_row(r) for r in records[:LATEST]], "failures": failures,
            "drift": _drift_history(out, now)}


def _drift_history(out: Path, now: datetime) -> list[dict[str, Any]]:
    """The drift statistics of the last `DRIFT_DAYS` days, at most `DRIFT_POINTS` points (evenly thinned)."""
    points = read_history(out, since=(now - timedelta(days=DRIFT_DAYS)).isoformat(timespec="seconds"))
    step = max(1, len(points) // DRIFT_POINTS)
    kept = points[::step] + ([points[-1]] if points and (len(points) - 1) % step else [])
    return [{"at": p.get("at"), "statistics": p.get("statistics", {}), "alarms": p.get("alarms", []),
             "changes": [c for c in p.get("changes", []) if c.get("kind") in ("alarm", "device")]} for p in kept]


def create_app(out_dir: str | Path, *, login: Any = None, https: bool = False, insecure: bool = False,
               trail: Any = None) -> Any:
    """The Starlette application over `out_dir` (read-only), behind its guard (`page_guard.Guard`): the login
    where one is given, the security headers always; `insecure` says on the page that it has neither HTTPS nor a
    login; `trail` records the logins accepted and refused."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse
    from starlette.routing import Route

    out = Path(out_dir).resolve()
    index = ResultIndex(out)
    lock = asyncio.Lock()  # one refresh at a time: the index is shared by every open page

    latest: dict[str, Any] = {"at": float("-inf"), "data": None}

    async def current() -> dict[str, Any]:
        """The snapshot, shared by every open page: taken at most twice per `EVENT_POLL_S`, not once per page."""
        async with lock:
            if time.monotonic() - latest["at"] >= EVENT_POLL_S / 2:
                latest["data"] = await asyncio.to_thread(snapshot, out, index)
                latest["at"] = time.monotonic()
            return latest["data"]

    async def page(request: Request) -> HTMLResponse:
        data = await current()  # the latest rows drawn here, thumbnails included, before any script runs
        banner = '<p class="insecure">INSECURE: served without HTTPS or a login (--insecure)</p>' if insecure else ""
        return HTMLResponse(PAGE.replace("{{folder}}", html.escape(str(out))).replace("{{banner}}", banner)
                            .replace("{{rows}}", "".join(_row_html(r) for r in data["latest"])))

    async def state(request: Request) -> JSONResponse:
        return JSONResponse(await current())

    events = _events(current)
    heatmap, thumbnail = _heatmap_routes(out)
    app = Starlette(routes=[Route("/", page), Route("/api/status", state), Route("/events", events),
                            Route("/cam/{name}", heatmap), Route("/thumb/{name}", thumbnail)])

    def audited(accepted: bool, peer: str) -> None:
        if trail is not None:
            trail.record("login-accepted" if accepted else "login-refused", peer=peer)

    return Guard(app, login, https=https, on_login=audited)


def _events(current: Any) -> Any:
    """The server-sent event stream: a snapshot whenever it changes, a comment line to keep idle proxies open."""
    from starlette.requests import Request
    from starlette.responses import StreamingResponse

    async def events(request: Request) -> StreamingResponse:
        async def stream() -> Any:
            last = None
            quiet = 0
            while not await request.is_disconnected():
                data = await current()
                body = json.dumps({k: v for k, v in data.items() if k != "now"} | {"health": {
                    k: v for k, v in data["health"].items() if k != "heartbeat_age_s"}})
                if body != last:
                    last, quiet = body, 0
                    yield f"data: {json.dumps(data)}\n\n"
                else:
                    quiet += 1
                    if quiet % 15 == 0:
                        yield ": still here\n\n"  # keeps proxies from closing an idle stream
                await asyncio.sleep(EVENT_POLL_S)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return events


def _heatmap_routes(out: Path) -> tuple[Any, Any]:
    """The heatmap and its thumbnail, served only from the output's cam/ folder, by a plain file name."""
    from starlette.requests import Request
    from starlette.responses import FileResponse, Response

    def heatmap_path(name: str) -> Path | None:
        path = out / "cam" / name
        if "/" in name or name.startswith(".") or not name.endswith(".png") or not path.is_file():
            return None
        return path

    # a heatmap never changes once written: the browser keeps it instead of asking again at every update
    immutable = {"Cache-Control": "max-age=86400, immutable"}

    async def heatmap(request: Request) -> Response:
        path = heatmap_path(request.path_params["name"])
        if path is None:
            return Response("no such heatmap", status_code=404, media_type="text/plain")
        return FileResponse(path, media_type="image/png", headers=immutable)

    async def thumbnail(request: Request) -> Response:
        path = heatmap_path(request.path_params["name"])
        if path is None:
            return Response("no such heatmap", status_code=404, media_type="text/plain")
        data = await asyncio.to_thread(_thumbnail, path)
        if data is None:
            return Response("unreadable heatmap", status_code=404, media_type="text/plain")
        return Response(data, media_type="image/jpeg", headers=immutable)
    return heatmap, thumbnail


def result_text(row: dict[str, Any]) -> str:
    """What a result row says in its result cell: the finding (and the class where it says more), or why not."""
    if row["status"] in ("failed", "rejected"):
        return row["status"]
    finding, label = row.get("finding"), row.get("label")
    return f"{finding} ({label})" if label and finding and label != finding else str(finding or label or row["top"])


def _row_html(r: dict[str, Any]) -> str:
    """One result row as the page's script draws it, for the page as served."""
    from datetime import datetime as clock

    when = html.escape(clock.fromisoformat(r["finished"]).strftime("%H:%M:%S")) if r.get("finished") else "-"
    warnings = "".join(f'<div class="warn">{html.escape(w)}</div>' for w in r["warnings"])
    confidence = "-" if r["confidence"] is None else f"{100 * r['confidence']:.1f} %"
    latency = "-" if r["latency_ms"] is None else f"{r['latency_ms']:.1f} ms"
    heatmap = (f'<a href="{html.escape(r["cam"])}"><img class="thumb" src="{html.escape(r["thumb"])}" '
               f'alt="heatmap of {html.escape(r["name"])}"></a>') if r.get("cam") else "-"
    return (f'<tr class="result" data-name="{html.escape(r["name"])}"><td>{when}</td><td>{html.escape(r["name"])}'
            f'</td><td><div class="label">{html.escape(result_text(r))}</div>{warnings}</td><td>{confidence}</td>'
            f'<td class="{html.escape(r["status"])}">{html.escape(r["status"])}</td><td>{latency}</td>'
            f'<td>{heatmap}</td></tr>')


THUMB_HEIGHT = 96
"""Pixel height of the table's heatmap thumbnails: a small JPEG instead of the full picture, so that a browser
on the workstation decodes a few kilobytes per new result, not a megapixel PNG."""


def _thumbnail(path: Path) -> bytes | None:
    import cv2

    picture = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if picture is None:
        return None
    scale = THUMB_HEIGHT / picture.shape[0]
    small = cv2.resize(picture, (max(1, round(picture.shape[1] * scale)), THUMB_HEIGHT), interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 85])
    return encoded.tobytes() if ok else None


def serve(out_dir: str | Path, *, host: str = "127.0.0.1", port: int = 8080, tls_cert: str | None = None,
          tls_key: str | None = None, login_file: str | None = None, insecure: bool = False,
          audit_dir: str | Path | None = None) -> None:
    """Serve the page until interrupted (uvicorn, one worker): over HTTPS with the site's certificate, behind the
    login, and beyond loopback only with both (`page_guard.check_exposure`)."""
    import uvicorn

    from ..outputs.tls import CIPHERS, server_context
    from ..outputs.trail import AuditTrail
    from .login import Login

    https = tls_cert is not None and tls_key is not None
    if https:
        server_context(tls_cert, tls_key)  # a wrong certificate or key is one line, before uvicorn starts
    login = Login(login_file) if login_file is not None else None
    check_exposure(host, https=https, login=login is not None, insecure=insecure)
    trail: AuditTrail | None = AuditTrail(Path(audit_dir) if audit_dir is not None else Path(out_dir) / "audit")
    try:
        trail.record("start", mode="status-page", host=host, port=port, https=https, login=login is not None,
                     insecure=insecure)
    except OSError as exc:  # a page that may only read the folder (a group member) audits nothing there
        log.warning("no audit trail for the status page (%s); give --audit-dir", exc.strerror or exc)
        trail = None
    app = create_app(out_dir, login=login, https=https, insecure=insecure and not (https and login), trail=trail)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, ssl_certfile=tls_cert,
                ssl_keyfile=tls_key, ssl_ciphers=CIPHERS)


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cxr-edge status</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body{font-family:system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
 header{background:#1d2330;color:#fff;padding:.6rem 1rem;display:flex;gap:1rem;align-items:baseline}
 header h1{font-size:1.1rem;margin:0} header small{opacity:.7;overflow-wrap:anywhere}
 main{padding:1rem;display:grid;gap:1rem;grid-template-columns:minmax(0,3fr) minmax(0,1fr)}
 section{background:#fff;border-radius:6px;padding:.8rem;box-shadow:0 1px 2px #0002}
 h2{font-size:.95rem;margin:.1rem 0 .6rem}
 table{border-collapse:collapse;width:100%;font-size:.85rem;table-layout:fixed}
 section{contain:content} td{overflow:hidden;text-overflow:ellipsis} #latest td:nth-child(2){white-space:nowrap}
 td,th{padding:.3rem .4rem;text-align:left;
 border-bottom:1px solid #e3e5ea;vertical-align:middle} th{font-weight:600;color:#555}
 .classified{color:#14632f} .uncertain{color:#8a5a00} .rejected{color:#6b6b6b} .failed,.quarantined{color:#a11}
 .pill{display:inline-block;padding:.1rem .5rem;border-radius:1rem;font-weight:600}
 .ok{background:#d9f2e1;color:#14632f} .bad{background:#f8d7d7;color:#a11}
 .signal{display:grid;grid-template-columns:6.5rem 1fr 5.5rem;gap:.4rem;align-items:center;font-size:.85rem}
 .signal.alarm{color:#a11;font-weight:600} .spark{width:100%;height:2rem}
 .spark .value{fill:none;stroke:#1f5f8b;stroke-width:1.2} .spark .threshold{stroke:#c0392b;stroke-dasharray:3 2}
 .events{font-size:.85rem;padding-left:1.1rem}
 img.thumb{height:48px;border-radius:3px;cursor:zoom-in} dl{display:grid;grid-template-columns:auto 1fr;
 gap:.2rem .6rem;margin:0;font-size:.85rem} dt{color:#555} dd{margin:0;overflow-wrap:anywhere}
 .bars{display:flex;align-items:flex-end;gap:2px;height:70px} .bars div{flex:1;background:#4a7bd0;min-height:1px}
 .warn{font-size:.75rem;color:#8a5a00} .notice{font-size:.75rem;color:#555;margin-top:.6rem}
 dialog img{max-width:95vw;max-height:88vh} dialog{border:none;border-radius:6px;max-width:97vw}
 .label{white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
 .insecure{background:#a11;color:#fff;margin:0;padding:.4rem 1rem;font-weight:600}
</style></head>
<body>
<header><h1>cxr-edge</h1><small>{{folder}}</small><span id="health" class="pill">...</span></header>{{banner}}
<main>
 <div>
  <section><h2>Latest results</h2>
   <table id="latest"><thead><tr><th>time</th><th>input</th><th>result</th><th>probability</th><th>status</th>
   <th>latency</th><th>heatmap</th></tr></thead><tbody>{{rows}}</tbody></table>
   <p class="notice">Not for diagnostic use: automated classification, not reviewed by a physician.</p></section>
  <section><h2>Failures</h2><table id="failures"><thead><tr><th>time</th><th>input</th><th>reason</th></tr>
   </thead><tbody></tbody></table></section>
 </div>
 <div>
  <section><h2>Live mode</h2><dl id="live"></dl></section>
  <section><h2>Images per hour (last 24 h)</h2><div class="bars" id="hours"></div>
   <dl id="counts" style="margin-top:.6rem"></dl></section>
  <section><h2>Forwarding</h2><dl id="outbox"></dl></section>
  <section><h2>Drift</h2><p><span id="drift-state" class="pill">...</span></p>
   <div id="drift-signals"></div><ul id="drift-events" class="events"></ul></section>
 </div>
</main>
<dialog id="viewer"><img id="viewer-img" alt="heatmap"><form method="dialog"><button>close</button></form></dialog>
<script>
const $ = (id) => document.getElementById(id);
const text = (value) => { const span = document.createElement('span'); span.textContent = value ?? ''; return span; };
const clock = (iso) => iso ? new Date(iso).toLocaleTimeString() : '-';
function cell(row, content, cls) {
  const td = row.insertCell(); if (cls) td.className = cls;
  if (content instanceof Node) td.append(content); else td.textContent = content ?? ''; return td;
}
function pairs(target, entries) {
  target.replaceChildren();
  for (const [key, value] of entries) {
    const dt = document.createElement('dt'); dt.textContent = key;
    const dd = document.createElement('dd'); dd.textContent = value ?? '-'; target.append(dt, dd);
  }
}
const thumbnails = new Map();  // src -> <img>: kept across updates, so no image is fetched or decoded twice
function thumbnail(r) {
  let img = thumbnails.get(r.cam);
  if (!img) {
    img = document.createElement('img'); img.className = 'thumb'; img.src = r.thumb; img.alt = 'heatmap of ' + r.name;
    img.onclick = () => { $('viewer-img').src = r.cam; $('viewer').showModal(); };
    thumbnails.set(r.cam, img);
    if (thumbnails.size > 200) thumbnails.delete(thumbnails.keys().next().value);
  }
  return img;
}
const drawn = {};  // section -> the JSON it was last drawn from: a section that did not change is not redrawn
function changed(section, value) {
  const json = JSON.stringify(value); if (drawn[section] === json) return false; drawn[section] = json; return true;
}
const rows = new Map();  // result key -> <tr>: a result's row is built once and moved, never rebuilt
function resultRow(r) {
  const key = r.finished + '|' + r.name + '|' + r.status; let row = rows.get(key);
  if (row) return row;
  row = document.createElement('tr'); row.dataset.name = r.name; row.className = 'result';
  cell(row, clock(r.finished)); cell(row, r.name);
  const label = document.createElement('div');
  const said = document.createElement('div'); said.className = 'label';
  said.textContent = (r.status === 'failed' || r.status === 'rejected') ? r.status
    : (r.label && r.finding && r.label !== r.finding ? `${r.finding} (${r.label})` : (r.finding || r.label || r.top));
  said.title = said.textContent; label.append(said);
  for (const w of r.warnings) { const d = document.createElement('div'); d.className = 'warn'; d.textContent = w;
    label.append(d); }
  cell(row, label);
  cell(row, r.confidence == null ? '-' : (100 * r.confidence).toFixed(1) + ' %');
  cell(row, r.status, r.status);
  cell(row, r.latency_ms == null ? '-' : r.latency_ms.toFixed(1) + ' ms');
  if (r.cam) cell(row, thumbnail(r)); else cell(row, '-');
  rows.set(key, row);
  if (rows.size > 500) rows.delete(rows.keys().next().value);
  return row;
}
function render(s) {
  const h = s.health;
  if (changed('health', h)) {
    const badge = $('health');
    badge.textContent = h.running ? `${h.mode} running` : (h.mode ? `${h.mode}: ${h.state}` : h.state);
    badge.className = 'pill ' + (h.running ? 'ok' : 'bad');
    pairs($('live'), [['state', h.state], ['watching', h.watching || h.listening], ['model', h.model],
      ['last arrival', clock(h.last_arrival)], ['last result', clock(h.last_result)], ['queue', h.queue],
      ['outbox backlog', h.outbox_backlog], ['output folder', h.blocked ? 'cannot write: ' + h.blocked : 'ok']]);
  }
  if (changed('latest', s.latest)) $('latest').tBodies[0].replaceChildren(...s.latest.map(resultRow));
  if (changed('failures', s.failures)) {
    const fails = $('failures').tBodies[0]; fails.replaceChildren();
    for (const f of s.failures) { const row = fails.insertRow(); row.dataset.name = f.name; row.className = 'failure';
      cell(row, clock(f.finished)); cell(row, f.name); cell(row, f.error, f.status); }
  }
  if (changed('hours', [s.per_hour, s.counts, s.last_hour])) {
    const peak = Math.max(1, ...s.per_hour); $('hours').replaceChildren(...s.per_hour.map((n, i) => {
      const bar = document.createElement('div'); bar.style.height = (100 * n / peak) + '%';
      bar.title = `${n} image(s), ${23 - i} h ago`; return bar; }));
    pairs($('counts'), [['this hour', s.last_hour], ['classified', s.counts.classified],
      ['uncertain', s.counts.uncertain], ['rejected', s.counts.rejected], ['failed', s.counts.failed]]);
  }
  if (changed('drift', [h.drift, s.drift])) renderDrift(h.drift, s.drift);
  if (changed('outbox', s.outbox)) {
    pairs($('outbox'), s.outbox.length ? s.outbox.flatMap(o => [[o.destination, `${o.backlog} waiting, `
      + `${o.sent} sent` + (o.refused ? `, ${o.refused} refused` : '')], ['last error', o.last_error
      ? `${o.last_error} (next try ` + clock(o.next_attempt) + ')' : 'none']]) : [['PACS', 'not forwarding']]);
  }
}
const SVG = 'http://www.w3.org/2000/svg';
function sparkline(values, threshold) {
  const svg = document.createElementNS(SVG, 'svg'); svg.setAttribute('viewBox', '0 0 200 32');
  svg.setAttribute('class', 'spark'); const top = Math.max(threshold || 1, ...values) * 1.1;
  const y = (v) => (32 - 32 * v / top).toFixed(1);
  const line = document.createElementNS(SVG, 'polyline');
  line.setAttribute('points', values.map((v, i) => `${(200 * i / Math.max(1, values.length - 1)).toFixed(1)},${y(v)}`)
    .join(' '));
  line.setAttribute('class', 'value'); svg.append(line);
  if (threshold) { const t = document.createElementNS(SVG, 'line'); t.setAttribute('x1', 0); t.setAttribute('x2', 200);
    t.setAttribute('y1', y(threshold)); t.setAttribute('y2', y(threshold)); t.setAttribute('class', 'threshold');
    svg.append(t); }
  return svg;
}
function renderDrift(state, history) {
  const badge = $('drift-state');
  if (!state) { badge.textContent = 'no live mode'; badge.className = 'pill'; return; }
  const alarms = state.alarms.map(a => a.signal);
  badge.textContent = !state.baseline.complete ? `learning the baseline: ${state.baseline.images} of `
    + `${state.baseline.needed}` : (alarms.length ? 'ALARM: ' + alarms.join(', ') : 'no drift');
  badge.className = 'pill ' + (alarms.length ? 'bad' : (state.baseline.complete ? 'ok' : ''));
  const signals = $('drift-signals'); signals.replaceChildren();
  for (const [name, threshold] of Object.entries(state.thresholds)) {
    const row = document.createElement('div'); row.className = 'signal' + (alarms.includes(name) ? ' alarm' : '');
    const now = state.statistics[name];
    row.append(text(name), sparkline(history.map(p => p.statistics[name] ?? 0), threshold),
      text(now == null ? '-' : `${now.toFixed(1)} / ${threshold.toFixed(1)}`));
    signals.append(row);
  }
  const list = $('drift-events'); list.replaceChildren();
  for (const c of history.flatMap(p => p.changes).slice(-6).reverse()) {
    const item = document.createElement('li');
    item.textContent = `${clock(c.at)} ` + (c.kind === 'device' ? `new device: ${c.device}`
      : `alarm on ${c.signal} (${c.statistic} over ${c.threshold})`);
    list.append(item);
  }
}
fetch('api/status').then(r => r.json()).then(render);
const events = new EventSource('events');
events.onmessage = (e) => render(JSON.parse(e.data));
</script>
</body></html>
"""
