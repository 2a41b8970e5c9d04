/*
 * Spin model of Keel's slot ring protocol: keel_core::ring::slot, used by keel_net::ring.
 *
 * The labels p_write, p_publish, p_check, p_notify (producer) and c_poll, c_arm,
 * c_recheck, c_sleep, c_wake (consumer) are the step names of the Rust code, which marks
 * each step with a comment "model: <label>". Keep both in step (docs/net.md maps them).
 *
 * Variants (spin -D...), run by scripts/model-check.sh:
 *   (none)            honest producer and consumer: no loss, duplication or reordering
 *                     (assertions over sequence numbers), no deadlock (invalid end
 *                     states), no lost wake-up (the monitor's assertion), and the LTL
 *                     property all_delivered (every frame is eventually delivered).
 *   HOSTILE_PRODUCER  the producer writes arbitrary indices and lengths: the consumer
 *                     never reads an unpublished or out-of-range slot, skips bad
 *                     lengths, breaks the ring on a wild index and always terminates.
 *   HOSTILE_CONSUMER  the consumer writes arbitrary indices and wake-up flags: the
 *                     producer never blocks and accounts for every frame (sent+dropped).
 *   BUG_NO_RECHECK    the consumer sleeps without re-checking after arming: the script
 *                     expects the lost-wake-up assertion to FAIL (the model can see it).
 *
 * Memory model: Spin interleaves sequentially consistent steps. The Rust code obtains
 * that order where it matters (store head / fence / load wakeup against store wakeup /
 * fence / load head) with SeqCst fences; every other cross-side access is a
 * release/acquire pair on the index that publishes it.
 */

#ifndef N
#define N 2            /* slots (a power of two) */
#endif
#ifndef F
#define F 10           /* frames the honest producer sends (indices wrap at W) */
#endif
#ifndef K
#define K 6            /* actions of a hostile party */
#endif
#define MAXLEN 2       /* longest valid record (abstract lengths 1..MAXLEN) */
#define W 8            /* indices are free-running counters modulo W (W > 2N) */

byte head, tail;       /* the published indices (window words) */
bit wakeup;            /* consumer's "needs wakeup" flag (window word) */
byte slot_seq[N];      /* record payload: the frame's sequence number */
byte slot_len[N];      /* record length field */
bit bell;              /* the notification object: a bit (seL4 notification, eventfd) */

/* Ghost state for the properties. */
bit sleeping;          /* the consumer is at c_sleep */
bit inflight;          /* the producer is between p_publish and the end of p_notify */
byte delivered;        /* frames the consumer delivered */
byte sent;             /* frames the producer put in the ring */
byte dropped;          /* frames the producer dropped */
bit broken;            /* the consumer declared the ring broken */
bit cdone;             /* the honest consumer got all F frames */

#define USED(h, t) (((h) + W - (t)) % W)

/* p_publish, p_check, p_notify with the producer's local index h. */
#define PUBLISH \
p_publish: atomic { head = h; inflight = 1 }; \
p_check:   if \
           :: wakeup -> \
p_notify:     bell = 1 \
           :: else -> skip \
           fi; \
           inflight = 0

#ifndef HOSTILE_PRODUCER
active proctype producer() {
    byte seq = 0, h = 0;
    do
    :: seq < F ->
#ifdef HOSTILE_CONSUMER
        if
        :: USED(h, tail) >= N ->   /* full, or tail wild: drop and count, never block */
            dropped++
        :: else ->
p_write:    slot_seq[h % N] = seq; slot_len[h % N] = 1; h = (h + 1) % W;
            PUBLISH;
            sent++
        fi;
#else
        /* A full ring drops in the Rust code; a well-behaved sender retries later,
           modelled as waiting for space. */
        USED(h, tail) < N;
p_write: slot_seq[h % N] = seq; slot_len[h % N] = 1; h = (h + 1) % W;
        PUBLISH;
        sent++;
#endif
        seq++
    :: else -> break
    od;
#ifdef HOSTILE_CONSUMER
    assert(sent + dropped == F)
#endif
}
#else
/* A hostile producer: any head value (ahead, behind, far away), any lengths. */
active proctype producer() {
    byte i = 0, h = 0;
    do
    :: i < K ->
        if
        :: h = (h + 1) % W      /* plausible step */
        :: h = (h + N + 1) % W  /* more than N ahead */
        :: h = (h + W - 1) % W  /* backwards */
        fi;
        if
        :: slot_len[i % N] = 0
        :: slot_len[i % N] = 1
        :: slot_len[i % N] = MAXLEN + 1
        fi;
        PUBLISH;
        i++
    :: else -> break
    od
}
#endif

#ifndef HOSTILE_CONSUMER
active proctype consumer() {
    byte t = 0, expect = 0, a, l;
c_poll:
#ifndef HOSTILE_PRODUCER
    if
    :: expect == F -> cdone = 1; goto done
    :: else -> skip
    fi;
#endif
    a = USED(head, t);                          /* acquire load of head */
    if
    :: a > N -> broken = 1; goto done          /* wild producer index: ring broken */
    :: a > 0 && a <= N ->
        l = slot_len[t % N];                    /* read the length once */
        if
        :: l == 0 || l > MAXLEN -> skip         /* bad length: skip the slot, count */
        :: else ->
#ifndef HOSTILE_PRODUCER
            assert(slot_seq[t % N] == expect);  /* no loss, duplication, reordering */
            expect++;
#endif
            delivered++
        fi;
        t = (t + 1) % W;
        tail = t;                               /* release store of tail */
        goto c_poll
    :: a == 0 -> skip
    fi;
c_arm:
    wakeup = 1;
c_recheck:
#ifndef BUG_NO_RECHECK
    a = USED(head, t);
    if
    :: a != 0 -> wakeup = 0; goto c_poll     /* records arrived meanwhile */
    :: else -> skip
    fi;
#endif
c_sleep:
    sleeping = 1;
#ifdef HOSTILE_PRODUCER
end_sleep:   /* a hostile producer may never notify again: sleeping forever is its loss */
#endif
    bell == 1;
    atomic { bell = 0; sleeping = 0 };
c_wake:
    wakeup = 0;
    goto c_poll;
done:
    skip
}
#else
/* A hostile consumer: any tail value, any wake-up flag, in any order. */
active proctype consumer() {
    byte i = 0;
    do
    :: i < K ->
        if
        :: tail = (tail + 1) % W
        :: tail = (tail + W - 1) % W
        :: tail = (tail + N + 1) % W
        :: wakeup = 1
        :: wakeup = 0
        :: bell = 0
        fi;
        i++
    :: else -> break
    od
}
#endif

#if !defined(HOSTILE_PRODUCER) && !defined(HOSTILE_CONSUMER)
/* No lost wake-up: the consumer never sleeps while a record is pending and no
   notification is on its way (neither rung nor being decided by the producer). Spin
   checks this assertion in every reachable state. */
active proctype monitor() {
    assert(!(sleeping && head != tail && !bell && !inflight))
}

ltl all_delivered { <> (delivered == F) }
#endif
