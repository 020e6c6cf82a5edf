"""The review page's fixtures (defined in support.py beside the helpers the tests import)."""

from tests.review_page.support import classified, report_path, running  # noqa: F401
