// Abuser: grows its heap on every request until the memory limit ends it.
const hoard = [];
export default {
  fetch() {
    for (;;) hoard.push(new Array(1 << 16).fill(hoard.length));
  },
};
