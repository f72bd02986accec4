# RPM %postun: forget the removed unit. The state in /var/lib/rollback-agent
# is kept (remove it by hand); the applications' releases are never touched.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || :
fi
