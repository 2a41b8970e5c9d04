/*
 * Spin model of the split virtqueue's used-buffer notification with VIRTIO_F_EVENT_IDX
 * (virtio 1.2 §2.7.10): the device side is keel_virtio::queue::Queue::add_used and
 * Queue::needs_notification, the driver side is Linux's (virtqueue_get_buf /
 * virtqueue_enable_cb_delayed / virtqueue_poll).
 *
 * Device (labels d_publish, d_fence, d_read, d_notify):
 *   add_used:             used_idx = new                 (release store)
 *   needs_notification:   old = signalled; signalled = new;
 *                         fence(SeqCst);                 (d_fence)
 *                         ev = used_event                (acquire load, d_read)
 *                         notify iff vring_need_event(ev, new, old)
 * Driver (labels c_poll, c_arm, c_recheck, c_sleep):
 *   consume every used entry; then used_event = last_seen ("interrupt me when entry
 *   last_seen is used"); full barrier; re-check used_idx: if it moved, consume again,
 *   else sleep until the interrupt.
 *
 * The device may complete several entries before it decides (a batch). It completes at
 * most N entries the driver has not consumed (the ring holds N). Indices are the rings'
 * free-running 16-bit counters, modelled modulo W (W > 2N), starting 3 below the
 * wraparound so that every run crosses it. The device starts as a queue that has decided
 * before (signalled = START), the driver armed at START.
 *
 * Properties (scripts/model-check.sh):
 *   - no lost wake-up: the monitor's assertion (the driver never sleeps while a used entry
 *     is pending, the device has decided about every entry it published and no interrupt
 *     is on its way), and no invalid end state (the driver blocked forever);
 *   - no notification storm: at most one interrupt per value the driver armed used_event
 *     with (assertion at d_notify; the interrupt answers the arming the device read);
 *   - LTL all_consumed: every completion is eventually consumed.
 *
 * Variants (spin -D...), each of which spin must find a violation for:
 *   BUG_NO_FENCE      the device reads used_event before its used_idx store is visible:
 *                     what dropping the fence allows (store->load reordering, even on x86).
 *                     Spin interleaves sequentially consistent steps, so the reordering is
 *                     modelled as the read happening before the publish.
 *   BUG_NO_RECHECK    the driver sleeps right after setting used_event, without looking at
 *                     used_idx again.
 *
 * Memory model: as in crates/keel-net/model/ring.pml, Spin's steps are sequentially
 * consistent; the Rust code gets that order where it matters (store used_idx / fence /
 * load used_event against the driver's store used_event / mb / load used_idx).
 */

#ifndef N
#define N 4            /* queue size */
#endif
#ifndef F
#define F 8            /* completions the device makes */
#endif
#define W 16           /* indices modulo W (W > 2N) */
#define START (W - 3)  /* first index: the run crosses the wraparound */

#define SUB(a, b) (((a) + W - (b)) % W)
/* vring_need_event(event, new, old): new - event - 1 < new - old, wrapping */
#define NEED_EVENT(e, nw, od) (SUB(SUB(nw, e), 1) < SUB(nw, od))

byte used_idx = START; /* used ring index (device writes, driver reads) */
byte used_event = START; /* driver writes, device reads */
bit irq;               /* an interrupt is pending (the driver takes it when it wakes) */

/* Ghost state for the properties. */
byte seen = START;     /* the driver's last_seen (the device reads it only for ring space) */
byte consumed;         /* entries the driver consumed */
bit sleeping;          /* the driver is at c_sleep */
bit inflight;          /* the device published entries it has not decided about yet */
byte epoch;            /* the driver's armings of used_event, modulo 4 (0: the initial 0) */
byte notified = 255;   /* the arming the last interrupt answered (255: none since) */

active proctype device() {
    byte new = START, old = START, ev, ev_epoch, done = 0;
d_loop:
    if
    :: done < F && SUB(new, seen) < N ->
#ifdef BUG_NO_FENCE
d_read_early:
        atomic { ev = used_event; ev_epoch = epoch };
#endif
d_publish:                                   /* add_used */
        atomic { new = (new + 1) % W; used_idx = new; inflight = 1 };
        done++;
        if
        :: skip                              /* decide now */
        :: goto d_loop                       /* batch: decide after a later completion */
        fi
    :: inflight -> skip                      /* decide for the batch (ring full, or last) */
    :: done == F && !inflight -> goto d_end
    fi;
    /* needs_notification: signalled = new, then: */
d_fence:
    skip;
#ifndef BUG_NO_FENCE
d_read:
    atomic { ev = used_event; ev_epoch = epoch };
#endif
    if
    :: NEED_EVENT(ev, new, old) ->
d_notify:
        atomic { assert(notified != ev_epoch); notified = ev_epoch; irq = 1 }
    :: else -> skip
    fi;
    atomic { old = new; inflight = 0; ev = 0; ev_epoch = 0 }; /* (dead values cleared) */
    goto d_loop;
d_end:
    skip
}

active proctype driver() {
    byte idx;
c_poll:
    if
    :: consumed == F -> goto done
    :: else -> skip
    fi;
    idx = used_idx;                             /* acquire load */
    if
    :: idx != seen ->
        atomic { consumed = consumed + SUB(idx, seen); seen = idx; idx = 0 };
        goto c_poll
    :: else -> idx = 0
    fi;
c_arm:
    atomic {
        used_event = seen;
        epoch = (epoch + 1) % 4;
        if
        :: notified == epoch -> notified = 255  /* a new arming: nothing answered it */
        :: else -> skip
        fi
    };
#ifndef BUG_NO_RECHECK
c_recheck:
    if
    :: used_idx != seen -> goto c_poll          /* entries arrived meanwhile */
    :: else -> skip
    fi;
#endif
c_sleep:
    sleeping = 1;
    irq == 1;
    atomic { irq = 0; sleeping = 0 };
    goto c_poll;
done:
    skip
}

/* No lost wake-up: checked in every reachable state. */
active proctype monitor() {
    assert(!(sleeping && used_idx != seen && !irq && !inflight))
}

ltl all_consumed { <> (consumed == F) }
