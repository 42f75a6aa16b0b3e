"""DICOMweb in: the instances of a PACS found by QIDO-RS and fetched by WADO-RS, for scoring an archive.

A source ``dicomweb+http://host/dicom-web`` (or ``dicomweb+https://``) becomes the WADO-RS address of every
instance that QIDO-RS finds with the given modalities and study dates; each address is then fetched as the PACS
stores it (``transfer-syntax=*``: a JPEG 2000 film stays JPEG 2000 and is decoded at reduced resolution, as from a
folder). The address names the instance for good, so a later run skips what it has already scored.
"""

from __future__ import annotations

import json
import re
import urllib.parse
import urllib.request
from collections.abc import Sequence

from ..errors import CxrEdgeError

__all__ = ["SCHEME", "is_dicomweb", "query_instances", "fetch_instance"]

SCHEME = "dicomweb+"
PAGE = 500
"""Instances asked for per QIDO-RS request (``limit`` and ``offset``)."""
TIMEOUT_S = 60.0


def is_dicomweb(source: str) -> bool:
    return str(source).startswith((SCHEME + "http://", SCHEME + "https://"))


def query_instances(source: str, *, modalities: Sequence[str] = ("CR", "DX"),
                    study_date: str | None = None) -> list[str]:
    """The WADO-RS address of every instance of the given modalities (and study date range, ``20240101-20241231``)."""
    base = source[len(SCHEME):].rstrip("/")
    found: list[str] = []
    for modality in modalities:
        offset = 0
        while True:
            query = {"Modality": modality, "limit": PAGE, "offset": offset,
                     "includefield": "0020000D,0020000E,00080018"}
            if study_date:
                if not re.fullmatch(r"\d{8}(-\d{8})?|\d{8}-|-\d{8}", study_date):
                    raise CxrEdgeError(f"--study-date {study_date!r}: expected YYYYMMDD or a range YYYYMMDD-YYYYMMDD")
                query["StudyDate"] = study_date
            rows = _get_json(f"{base}/instances?{urllib.parse.urlencode(query)}")
            for row in rows:
                uids = [(row.get(tag) or {}).get("Value", [None])[0] for tag in ("0020000D", "0020000E", "00080018")]
                if all(uids):
                    found.append(f"{base}/studies/{uids[0]}/series/{uids[1]}/instances/{uids[2]}")
            if len(rows) < PAGE:
                break
            offset += PAGE
    return sorted(set(found))


def _get_json(url: str) -> list[dict]:
    request = urllib.request.Request(url, headers={"Accept": "application/dicom+json"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as answer:
            body = answer.read()
    except OSError as exc:
        raise CxrEdgeError(f"{url.split('?')[0]}: QIDO-RS failed: {getattr(exc, 'reason', exc)}") from exc
    return json.loads(body) if body.strip() else []


def fetch_instance(url: str) -> bytes:
    """One instance by WADO-RS, as stored (the first part of the multipart answer)."""
    request = urllib.request.Request(url, headers={
        "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as answer:
        content_type, body = answer.headers.get("Content-Type", ""), answer.read()
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if match is None:
        return body  # a server that answered with the bare object
    delimiter = b"--" + match[1].encode()
    for part in body.split(delimiter)[1:]:
        head, _, data = part.partition(b"\r\n\r\n")
        if data:
            return data[:-2] if data.endswith(b"\r\n") else data
    raise OSError(f"{url}: the WADO-RS answer holds no instance")
