complete -c ipchubd -s s -l socket -d 'Control socket to bind when not socket-activated [default: /run/ipchub/ipchub.sock as root, else $XDG_RUNTIME_DIR/ipchub/ipchub.sock]' -r -F
complete -c ipchubd -s c -l config -d 'Configuration file [default: /etc/ipchub/ipchub.toml if it exists, else built-in defaults]' -r -F
complete -c ipchubd -l check-config -d 'Check the configuration and exit: status 0 if valid, else the error'
complete -c ipchubd -s h -l help -d 'Print help (see more with \'--help\')'
complete -c ipchubd -s V -l version -d 'Print version'
