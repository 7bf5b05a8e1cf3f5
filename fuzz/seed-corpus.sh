#!/usr/bin/env bash
# Rebuilds the seed corpora under fuzz/corpus/ (git-ignored) from the RFC torture messages:
#   corpus/sip_message, corpus/engine  <- ../shared/conformance/rfc4475/*.dat, rfc5118/*.dat,
#                                         rfc5118/wire/*.dat (paths relative to the repo root)
#   corpus/sdp                         <- the body (after the blank line) of every message whose
#                                         Content-Type is application/sdp
# Files already in corpus/ (e.g. inputs libFuzzer added) are kept. Run from anywhere.
# CONFORMANCE_DIR overrides where the torture messages are read from.
set -euo pipefail

fuzz_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$fuzz_dir/.." && pwd)"
conf="${CONFORMANCE_DIR:-$repo_root/../shared/conformance}"

if [ ! -d "$conf/rfc4475" ] || [ ! -d "$conf/rfc5118" ]; then
    echo "seed-corpus.sh: no torture messages at $conf (expected rfc4475/ and rfc5118/)" >&2
    exit 1
fi

mkdir -p "$fuzz_dir/corpus/sip_message" "$fuzz_dir/corpus/engine" "$fuzz_dir/corpus/sdp"

copied=0
sdp=0
for file in "$conf"/rfc4475/*.dat "$conf"/rfc5118/*.dat "$conf"/rfc5118/wire/*.dat; do
    [ -f "$file" ] || continue
    rel="${file#"$conf"/}"
    name="${rel//\//-}"            # rfc4475/clerr.dat -> rfc4475-clerr.dat
    cp "$file" "$fuzz_dir/corpus/sip_message/$name"
    cp "$file" "$fuzz_dir/corpus/engine/$name"
    copied=$((copied + 1))
    # Body of a message with Content-Type (or compact c:) application/sdp, byte for byte.
    if perl -0777 -e '
        binmode STDIN; binmode STDOUT;
        my $m = <STDIN>;
        $m =~ s/\A[\r\n]+//;
        my ($crlf, $lf) = (index($m, "\r\n\r\n"), index($m, "\n\n"));
        my ($end, $skip) = ($crlf >= 0 && ($lf < 0 || $crlf <= $lf)) ? ($crlf, 4)
                         : ($lf >= 0) ? ($lf, 2) : exit 1;
        my $head = substr($m, 0, $end);
        exit 1 unless $head =~ /^(?:content-type|c)[ \t]*:[ \t]*application\/sdp\b/mi;
        print substr($m, $end + $skip);
    ' < "$file" > "$fuzz_dir/corpus/sdp/$name.sdp"; then
        sdp=$((sdp + 1))
    else
        rm -f "$fuzz_dir/corpus/sdp/$name.sdp"
    fi
done

echo "seed-corpus.sh: $copied messages -> corpus/sip_message and corpus/engine, $sdp SDP bodies -> corpus/sdp"
