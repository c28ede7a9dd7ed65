"""The clinician's view: a pure timeline model of graded results and its self-contained HTML/SVG rendering.

`model.build_patients` turns a RunResult into plain view dataclasses (no I/O); `page` renders them as one
HTML document with inline CSS, JavaScript and SVG, the same for `cart-fhir report` and the SMART app.
"""
