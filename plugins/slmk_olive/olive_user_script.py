"""Olive imports this file by path (a workflow's ``user_script``): it registers slmk's
calibration data component, so the workflow needs slmk installed where Olive runs."""

from slmk_olive.olive_data import register

register()
