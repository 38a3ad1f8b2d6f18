// Abuser: answers with a promise that never settles (a timer far in the
// future keeps it pending until the wall-clock limit ends it).
export default {
  fetch() {
    return new Promise((resolve) => setTimeout(resolve, 1e9));
  },
};
