"""Load tests for the sample shop behind the facade: ``locustfile.py`` (shop users) and
``shape.py`` (the cutover load shape). Run by ``facade loadtest`` in a subprocess, because
importing locust monkey-patches the standard library (gevent); never import them from the facade."""
