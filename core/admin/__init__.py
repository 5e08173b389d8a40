"""The operator's console (``server.console``): a JSON admin API under ``/api/v1/`` and
server-rendered pages, on the process's own HTTP server (:mod:`tgmux.server`).

- :mod:`tgmux.admin.service`: what the console reads and does (accounts, backends, chats,
  users, config, reload), for the API and the pages alike: one place, no HTTP;
- :mod:`tgmux.admin.auth`: signing in (the token), sessions, CSRF, rate limits, the audit log;
- :mod:`tgmux.admin.api`: the JSON routes; :mod:`tgmux.admin.pages`: the HTML pages.
"""
