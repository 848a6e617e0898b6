"""The collector's web console (docs/console.md): approvals, runs, timelines, kill switches, fleet and overview.

Served by the collector (:class:`~gateway.console.server.ConsoleServer`, uvicorn inside the collector's event
loop); every page is a read model (:mod:`gateway.console.pages`) rendered by an autoescaped Jinja2 template, and
every state change is a POST with a CSRF token, authorised on the server by role and carried out through
:class:`~gateway.collector.fleet.FleetControl` (:mod:`gateway.console.web`).
"""
