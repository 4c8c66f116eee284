"""What operators look at: the PromQL (queries), alert rules (rules) and Grafana dashboards (dashboards).

All three are built from the metric and label names in `myelin.contract`; the files under `rules/` and
`dashboards/` are their committed renders, provisioned into Prometheus and Grafana by the add-ons.
"""
