"""Live mode beside the X-ray machine: a watched folder and a DICOM C-STORE receiver.

Both follow one rule: an input is claimed by a rename, its result is written atomically before the input moves
on, and a restart finishes whatever a crash left half done, so no image is lost or gets two results.
"""

from __future__ import annotations
