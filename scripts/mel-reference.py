#!/usr/bin/env python3
# Reference values for the mel filterbank that src/speech/model_import.rs writes into the ggml file:
# librosa.filters.mel(sr=16000, n_fft=400, n_mels=80) with its defaults (fmin 0, fmax sr/2,
# htk=False: the Slaney mel scale, norm='slaney', dtype float32), redone with the standard
# library only (no numpy, no librosa) by following librosa's code step by step, float32
# roundings included: the triangles are stored as float32, then multiplied in float64 by
# 2 / (f_hi - f_lo) and rounded to float32 again.
#
# Prints the numbers that the unit test `mel_filters_match_reference` pins: the sum and the sum
# of squares of all 80 x 201 values, each filter's first, peak and last non-zero bin, and a few
# single values as float32 bit patterns. `--dump FILE` also writes all values, one per line.
import math
import struct
import sys

SR, N_FFT, N_MELS = 16000, 400, 80
F_SP = 200.0 / 3
MIN_LOG_HZ = 1000.0
MIN_LOG_MEL = MIN_LOG_HZ / F_SP
LOGSTEP = math.log(6.4) / 27.0


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def f32_bits(x):
    return struct.unpack("<I", struct.pack("<f", x))[0]


def hz_to_mel(f):
    return MIN_LOG_MEL + math.log(f / MIN_LOG_HZ) / LOGSTEP if f >= MIN_LOG_HZ else f / F_SP


def mel_to_hz(m):
    return MIN_LOG_HZ * math.exp(LOGSTEP * (m - MIN_LOG_MEL)) if m >= MIN_LOG_MEL else F_SP * m


def filters():
    n_bins = N_FFT // 2 + 1
    val = 1.0 / (N_FFT * (1.0 / SR))  # numpy.fft.rfftfreq(n_fft, 1/sr)
    fft_hz = [k * val for k in range(n_bins)]
    lo, hi = hz_to_mel(0.0), hz_to_mel(SR / 2)
    step = (hi - lo) / (N_MELS + 1)  # numpy.linspace(lo, hi, n_mels + 2), endpoint exact
    mels = [i * step + lo for i in range(N_MELS + 2)]
    mels[-1] = hi
    mel_hz = [mel_to_hz(m) for m in mels]
    fdiff = [mel_hz[i + 1] - mel_hz[i] for i in range(N_MELS + 1)]
    rows = []
    for i in range(N_MELS):
        enorm = 2.0 / (mel_hz[i + 2] - mel_hz[i])
        row = []
        for k in range(n_bins):
            lower = -(mel_hz[i] - fft_hz[k]) / fdiff[i]
            upper = (mel_hz[i + 2] - fft_hz[k]) / fdiff[i + 1]
            row.append(f32(f32(max(0.0, min(lower, upper))) * enorm))
        rows.append(row)
    return rows


def main():
    rows = filters()
    flat = [v for row in rows for v in row]
    print(f"shape {len(rows)} x {len(rows[0])}")
    print(f"sum {math.fsum(flat)!r}")
    print(f"sum_sq {math.fsum(v * v for v in flat)!r}")
    spans = []
    for row in rows:
        nz = [k for k, v in enumerate(row) if v > 0]
        peak = max(range(len(row)), key=lambda k: row[k])
        spans.append((nz[0], peak, nz[-1]))
    print("spans (first, peak, last):", spans)
    for i, k in [(0, 1), (1, 1), (1, 2), (9, 10), (39, 41), (69, 131), (79, 190), (79, 192), (79, 199)]:
        print(f"value [{i}][{k}] = {rows[i][k]!r} bits 0x{f32_bits(rows[i][k]):08x}")
    if len(sys.argv) == 3 and sys.argv[1] == "--dump":
        with open(sys.argv[2], "w") as out:
            for v in flat:
                out.write(f"{f32_bits(v):08x}\n")


if __name__ == "__main__":
    main()
