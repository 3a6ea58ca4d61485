"""The audit log: who did what security-relevant thing, when, from where (issue 9)."""

from cloudcontainer.audit import actions
from cloudcontainer.audit.log import AuditLog, AuditPage, AuditQuery

__all__ = ["AuditLog", "AuditPage", "AuditQuery", "actions"]
