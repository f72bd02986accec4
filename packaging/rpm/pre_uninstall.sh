# RPM %preun: stop and disable the agent on removal (not on upgrade).
if [ $1 -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl --no-reload disable --now rollbackd.service || :
fi
