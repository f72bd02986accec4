# RPM %post: groups and directories first, then the unit (as the
# %systemd_post macro does: enable by preset, do not start).
systemd-sysusers rollback-agent.conf || :
systemd-tmpfiles --create rollback-agent.conf || :
if [ $1 -eq 1 ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload || :
    systemctl preset rollbackd.service || :
fi
if [ $1 -gt 1 ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload || :
    systemctl try-restart rollbackd.service || :
fi
