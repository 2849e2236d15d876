"""
The admin HTTP service: Prometheus metrics, stats, the management API and
the live dashboard, on their own listening socket, separate from traffic.

Modules:
  - L{txlb.admin.service}: the L{AdminService} and its resource tree;
  - L{txlb.admin.guard}: who may call what (token, Host/Origin, JSON);
  - L{txlb.admin.views}: the JSON shapes of pools, backends and stats;
  - L{txlb.admin.control}: runtime changes (servers, weights, states,
    strategies);
  - L{txlb.admin.metrics}: the Prometheus collector and C{/metrics};
  - L{txlb.admin.api}: the REST API and its OpenAPI document;
  - L{txlb.admin.dashboard}: the live page and its event stream.
"""
