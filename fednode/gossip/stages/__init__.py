"""The stages of one gossip round, each a small unit over its own typed state (:mod:`fednode.gossip.state`).

The driver (:mod:`fednode.gossip.round`) sequences them and routes every verified message to one:

=====================  ==========================================================================
``hello``              neighbour agreement: HELLO, edges E_i (all modes)
``contribute``         plaintext, contributor side: CONTRIBUTE x^{r+1/2}, answer RETRY, late edges
``collect``            plaintext, aggregator side: gather contributions, RETRY the missing, fix U_i
``masked_setup``       secure, both sides: the aggregator fixes U and sends SETUP/RETRY; the
                       contributor checks it
``masked_contribute``  secure, contributor side: noise, encode, mask, CONTRIBUTE (modes A and B);
                       mode A's REVEAL of the self-mask
``retry_unmask``       mode A, aggregator side: UNMASK/REVEAL, retry over the survivors, unmask
``masked_sum``         secure, aggregator side: decode S_i and check it is plausible (both modes)
``plus_shares``        mode B, contributor side: Shamir shares, relayed bundles, share reveals
``plus_unmask``        mode B, aggregator side: relay shares, fix U1/U2, reconstruct, unmask
``commit``             COMMIT exchange, mutual use, then mixing (:mod:`fednode.gossip.mix`)
``catchup``            sync at start, skip-ahead, resync by model fetch, future-round buffer
``modes``              which of these each mode runs, and the message-type routing table
=====================  ==========================================================================
"""
