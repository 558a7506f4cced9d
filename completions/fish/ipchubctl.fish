# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_ipchubctl_global_optspecs
    string join \n s/socket= h/help V/version
end

function __fish_ipchubctl_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_ipchubctl_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_ipchubctl_using_subcommand
    set -l cmd (__fish_ipchubctl_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c ipchubctl -n "__fish_ipchubctl_needs_command" -s s -l socket -d 'Control socket of the hub [default: $XDG_RUNTIME_DIR/ipchub/ipchub.sock when a hub of your own runs there (never for root), else the system hub\'s /run/ipchub/ipchub.sock]' -r -F
complete -c ipchubctl -n "__fish_ipchubctl_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c ipchubctl -n "__fish_ipchubctl_needs_command" -s V -l version -d 'Print version'
complete -c ipchubctl -n "__fish_ipchubctl_needs_command" -f -a "pub" -d 'Publish a message, a file, all of standard input, or one message per line of standard input'
complete -c ipchubctl -n "__fish_ipchubctl_needs_command" -f -a "sub" -d 'Subscribe and print messages as `[channel] payload`, payload lines, raw bytes, JSON or a format'
complete -c ipchubctl -n "__fish_ipchubctl_needs_command" -f -a "request" -d 'Send one request and print the reply (request/reply over channels)'
complete -c ipchubctl -n "__fish_ipchubctl_needs_command" -f -a "reply" -d 'Answer requests on a channel: a fixed text, or the output of a command'
complete -c ipchubctl -n "__fish_ipchubctl_needs_command" -f -a "stats" -d 'Show the hub\'s statistics: totals, the channels you may read and your own clients (root and the hub\'s user: all of them)'
complete -c ipchubctl -n "__fish_ipchubctl_needs_command" -f -a "dashboard" -d 'Serve a live web dashboard and Prometheus /metrics for this hub'
complete -c ipchubctl -n "__fish_ipchubctl_needs_command" -f -a "history" -d 'List the messages a channel\'s history holds (`[[channel]]` history keys), oldest first: its channel sequence number, then the payload'
complete -c ipchubctl -n "__fish_ipchubctl_needs_command" -f -a "check-config" -d 'Check a configuration file without starting a hub'
complete -c ipchubctl -n "__fish_ipchubctl_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand pub" -s c -l channel -d 'Channel to publish on, e.g. `sensors/kitchen/temp`' -r
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand pub" -l socket -d 'Control socket of the hub, as the --socket before the command (this one wins)' -r -F
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand pub" -s t -l transport -d 'How to reach the hub for data' -r -f -a "socket\t''
pipe\t''
fifo\t''
mqueue\t''
shm\t''"
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand pub" -s p -l priority -d 'Message priority 0..=31 (the POSIX mqueue priority, carried to every transport)' -r
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand pub" -s f -l file -d 'Publish the whole content of FILE as one message' -r -F
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand pub" -l repeat -d 'Publish the message (or file, or standard input) N times' -r
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand pub" -l interval -d 'Wait this long between repeated messages (fractions allowed)' -r
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand pub" -s q -l quiet -d 'Print no "Connected to hub" (or "Subscribed to") line on standard error'
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand pub" -l no-reconnect -d 'Exit (status 7) when the hub goes away, instead of reconnecting and carrying on once it is back (the default, said on standard error)'
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand pub" -l no-confirm -d 'Do not ask for delivery counts (prints nothing per message)'
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand pub" -s s -l stdin -d 'Publish all of standard input, up to its end, as one message (`-s`, as in mosquitto_pub; the control socket is `--socket` after `pub`)'
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand pub" -s l -l lines -d 'Publish each line of standard input as one message (the default without a message)'
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand pub" -l retain -d 'Keep the message as the channel\'s retained value, sent first to every later subscriber; an empty message clears it'
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand pub" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand sub" -s c -l channel -d 'Channel or pattern to subscribe to (`+` matches one level, `#` the rest); repeatable' -r
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand sub" -l exclude -d 'Leave out messages on channels matching this pattern; repeatable' -r
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand sub" -s s -l socket -d 'Control socket of the hub, as the --socket before the command (this one wins)' -r -F
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand sub" -s t -l transport -d 'How to reach the hub for data' -r -f -a "socket\t''
pipe\t''
fifo\t''
mqueue\t''
shm\t''"
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand sub" -s n -l count -d 'Exit after this many messages' -r
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand sub" -s F -l format -d 'Print each message as FORMAT (tokens above), then a newline' -r
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand sub" -l timeout -d 'Stop after this many seconds in all (fractions allowed)' -r
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand sub" -l idle-timeout -d 'Give up after this many seconds without a message' -r
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand sub" -l last -d 'Replay the last N stored messages of each channel with history first' -r
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand sub" -l since -d 'Replay the stored messages of the last DURATION first (90s, 10m, 2h, 1d)' -r
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand sub" -l from-seq -d 'Replay the stored messages from channel sequence number S on first' -r
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand sub" -s q -l quiet -d 'Print no "Connected to hub" (or "Subscribed to") line on standard error'
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand sub" -l no-reconnect -d 'Exit (status 7) when the hub goes away, instead of reconnecting and carrying on once it is back (the default, said on standard error)'
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand sub" -l json -d 'Print one JSON object per message (channel, payload, sequence, publisher with its client id and, while it is connected, pid, uid and name; priority, time received)'
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand sub" -l raw -d 'Write payload bytes unchanged, nothing else'
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand sub" -s l -l lines -d 'Print each payload followed by a newline, nothing else'
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand sub" -l no-retained -d 'Skip the retained values of the channels (sent first by default)'
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand sub" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand request" -s s -l socket -d 'Control socket of the hub, as the --socket before the command (this one wins)' -r -F
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand request" -s t -l transport -d 'How to reach the hub for data' -r -f -a "socket\t''
pipe\t''
fifo\t''
mqueue\t''
shm\t''"
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand request" -s p -l priority -d 'Message priority 0..=31' -r
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand request" -l timeout -d 'Give up after this many seconds without a reply' -r
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand request" -s q -l quiet -d 'Print no "Connected to hub" (or "Subscribed to") line on standard error'
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand request" -l no-reconnect -d 'Exit (status 7) when the hub goes away, instead of reconnecting and carrying on once it is back (the default, said on standard error)'
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand request" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand reply" -l exec -d 'Answer with the standard output of `sh -c CMD`, given the request\'s body on standard input' -r
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand reply" -s n -l count -d 'Exit after answering this many requests' -r
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand reply" -s s -l socket -d 'Control socket of the hub, as the --socket before the command (this one wins)' -r -F
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand reply" -s t -l transport -d 'How to reach the hub for data' -r -f -a "socket\t''
pipe\t''
fifo\t''
mqueue\t''
shm\t''"
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand reply" -s q -l quiet -d 'Print no "Connected to hub" (or "Subscribed to") line on standard error'
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand reply" -l no-reconnect -d 'Exit (status 7) when the hub goes away, instead of reconnecting and carrying on once it is back (the default, said on standard error)'
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand reply" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand stats" -s s -l socket -d 'Control socket of the hub, as the --socket before the command (this one wins)' -r -F
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand stats" -l json -d 'Print the statistics as JSON'
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand stats" -s h -l help -d 'Print help'
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand dashboard" -s l -l listen -d 'Where to serve: HOST:PORT (loopback unless --allow-remote; port 0 picks a free one) or unix:PATH (a socket of mode 0600, no token)' -r
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand dashboard" -l token-file -d 'Read the token from this file (not readable by others) instead of making a random one; it is then not printed. For the service and a Prometheus `bearer_token_file`' -r -F
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand dashboard" -l interval -d 'Seconds between two snapshots while a page is open' -r
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand dashboard" -l metrics-top-channels -d '/metrics labels at most this many channels (most published first); the rest are summed under channel="(other)"' -r
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand dashboard" -l slow-queue -d 'A subscriber with at least this many queued messages is shown as slow (as is any that missed messages)' -r
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand dashboard" -l tail-max-bytes -d 'Payload bytes shown per tailed message; longer ones are cut' -r
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand dashboard" -l tail-rate -d 'Messages per second sent to the page per tail; the rest are counted as skipped' -r
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand dashboard" -l max-streams -d 'Open pages and tails at most (each holds a connection; a tail also a hub subscription)' -r
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand dashboard" -l allow-remote -d 'Accept a TCP address that is not loopback (e.g. 0.0.0.0:9178). The dashboard shows what its user may see to whoever has the token'
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand dashboard" -l no-token -d 'Serve TCP without a token: any local user (of any uid) can then read what this user may see'
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand dashboard" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand history" -l json -d 'One JSON object per message (channel_seq, sequence, publisher, priority, payload)'
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand history" -s h -l help -d 'Print help'
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand check-config" -s h -l help -d 'Print help'
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand help; and not __fish_seen_subcommand_from pub sub request reply stats dashboard history check-config help" -f -a "pub" -d 'Publish a message, a file, all of standard input, or one message per line of standard input'
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand help; and not __fish_seen_subcommand_from pub sub request reply stats dashboard history check-config help" -f -a "sub" -d 'Subscribe and print messages as `[channel] payload`, payload lines, raw bytes, JSON or a format'
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand help; and not __fish_seen_subcommand_from pub sub request reply stats dashboard history check-config help" -f -a "request" -d 'Send one request and print the reply (request/reply over channels)'
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand help; and not __fish_seen_subcommand_from pub sub request reply stats dashboard history check-config help" -f -a "reply" -d 'Answer requests on a channel: a fixed text, or the output of a command'
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand help; and not __fish_seen_subcommand_from pub sub request reply stats dashboard history check-config help" -f -a "stats" -d 'Show the hub\'s statistics: totals, the channels you may read and your own clients (root and the hub\'s user: all of them)'
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand help; and not __fish_seen_subcommand_from pub sub request reply stats dashboard history check-config help" -f -a "dashboard" -d 'Serve a live web dashboard and Prometheus /metrics for this hub'
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand help; and not __fish_seen_subcommand_from pub sub request reply stats dashboard history check-config help" -f -a "history" -d 'List the messages a channel\'s history holds (`[[channel]]` history keys), oldest first: its channel sequence number, then the payload'
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand help; and not __fish_seen_subcommand_from pub sub request reply stats dashboard history check-config help" -f -a "check-config" -d 'Check a configuration file without starting a hub'
complete -c ipchubctl -n "__fish_ipchubctl_using_subcommand help; and not __fish_seen_subcommand_from pub sub request reply stats dashboard history check-config help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
