"""Generated client library of the recommendation service API (package `recsys.v1`)."""
