complete -c ipchubd -s s -l socket -d 'Control socket to bind when not socket-activated [default: /run/ipchub/ipchub.sock as root, else $XDG_RUNTIME_DIR/ipchub/ipchub.sock]' -r -F
complete -c ipchubd -s c -l config -d 'Configuration file [default: /etc/ipchub/ipchub.toml if it exists, else built-in defaults]' -r -F
complete -c ipchubd -l log -d 'Where to log: auto is the journal when systemd connects standard error to it, else standard error; journal always uses the journal\'s native protocol (structured fields, see JOURNAL FIELDS); stderr is plain text' -r -f -a "auto\t'The journal when systemd connected standard error to it (`JOURNAL_STREAM`), else standard error'
journal\t'The journal\'s native protocol, whatever standard error is'
stderr\t'Plain text on standard error'"
complete -c ipchubd -l check-config -d 'Check the configuration and exit: status 0 if valid, else the error'
complete -c ipchubd -s h -l help -d 'Print help (see more with \'--help\')'
complete -c ipchubd -s V -l version -d 'Print version'
